"""A stemtrace site for page tests, and ways to read its pages (BeautifulSoup)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup, Tag
from fastapi import FastAPI, params
from starlette.testclient import TestClient

from stemtrace.core.events import Event
from stemtrace.server.app import create_app
from stemtrace.server.extension import StemtraceExtension
from stemtrace.server.live import Broadcaster
from stemtrace.server.site import Site as RouteSite
from stemtrace.settings import Settings
from stemtrace.store import Backend, open_store, parse_target
from stemtrace.store.schema import Store
from tests.pg import PG_ADMIN, database, database_of

URL_ATTRIBUTES = ("href", "src", "action", "hx-get", "sse-connect")


HTMX_WRITES = ("hx-post", "hx-put", "hx-patch", "hx-delete")


Site = Callable[..., TestClient]


BACKENDS = ("sqlite", "postgresql")
"""The store backends the suites that take ``db_target`` (and so ``site``, ``backend``)
or ``module_target`` run against, each test once per backend. A backend is added here
with the place a test's own empty store of it is made (:func:`db_target`,
:func:`module_target`, :func:`store_copy`)."""


def fill(target: str | Path, events: list[Event]) -> None:
    store = open_store(str(target))
    try:
        store.open_writer().ingest(events)
    finally:
        store.close()


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store file, migrated once: a copy spares each test the migrations
    (tens of milliseconds a store); tests of the migrations make their own stores."""
    path = tmp_path_factory.mktemp("migrated") / "empty.db"
    Store(path).close()
    assert not Path(f"{path}-wal").exists(), "closing the store checkpoints its log"
    return path


def copy_of(migrated: Path, path: Path) -> Path:
    shutil.copyfile(migrated, path)
    return path


@contextmanager
def empty_store(request: pytest.FixtureRequest, migrated: Path, path: Path) -> Iterator[str]:
    """A migrated empty store of the backend ``request.param`` names: SQLite's at ``path``,
    PostgreSQL's a database made from ``tests.pg.pg_migrated``, dropped afterwards."""
    if request.param == "postgresql":
        server, template = (request.getfixturevalue(f) for f in ("pg_server", "pg_migrated"))
        with database(server, template) as url:
            yield url
        return
    assert request.param == "sqlite", request.param
    yield str(copy_of(migrated, path))


@pytest.fixture(params=BACKENDS)
def db_target(request: pytest.FixtureRequest, tmp_path: Path, migrated: Path) -> Iterator[str]:
    """This test's own empty store, once per backend: what ``--db`` would name.

    Both are migrated: SQLite's a copy of the ``migrated`` file, PostgreSQL's a
    database of its own on the machine's server made from ``tests.pg.pg_migrated``
    (dropped afterwards). A test of the migrations makes its own (``pg_url``).
    """
    with empty_store(request, migrated, tmp_path / "t.db") as target:
        yield target


@pytest.fixture(scope="module", params=BACKENDS)
def module_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, migrated: Path
) -> Iterator[str]:
    """One empty store per module and backend, for the tests of a module that share what
    it holds (filled once, then only read): ``db_target``'s, made once for all of them.

    Its tests run once per backend, grouped by it (pytest sets a module fixture up once
    per parameter); ``BACKEND_FIXTURES`` names it so that conftest marks them.
    """
    with empty_store(request, migrated, tmp_path_factory.mktemp("module") / "t.db") as target:
        yield target


BACKEND_FIXTURES = ("db_target", "module_target")
"""The fixtures whose parameter is the backend a test runs on (one of ``BACKENDS``)."""


@contextmanager
def store_copy(target: str, folder: Path) -> Iterator[str]:
    """A store of its own holding what the store ``target`` holds, removed afterwards:
    a copy of SQLite's file in ``folder``, a database made from PostgreSQL's (as its
    template). Nothing may have ``target`` open meanwhile.

    For a test that wants a fresh store many times over (a Hypothesis example each):
    the copy of a migrated ``db_target`` spares the migrations.
    """
    if parse_target(target).kind == "postgresql":
        with database(PG_ADMIN, database_of(target)) as url:
            yield url
        return
    with tempfile.TemporaryDirectory(dir=folder) as inside:
        yield str(copy_of(Path(target), Path(inside) / "copy.db"))


@pytest.fixture
def db_path(db_target: str) -> Path:
    """This test's own SQLite file (already migrated): for tests of SQLite itself, which
    run on SQLite only (``tests.conftest`` leaves out their other backends)."""
    return Path(db_target)


@pytest.fixture
def backend(db_target: str) -> Iterator[Backend]:
    """This test's own store, opened, once per backend."""
    store = open_store(db_target)
    yield store
    store.close()


def serve(
    stack: ExitStack,
    db_target: str | Path,
    events: list[Event],
    *,
    prefix: str | None = None,
    dependencies: Sequence[params.Depends] = (),
    **settings: Any,
) -> TestClient:
    """A client of the site on the store ``db_target`` holding ``events``, closed with ``stack``."""
    fill(db_target, events)
    config = Settings(db=str(db_target), consumer=False, **settings)
    if prefix is None:
        app = create_app(config)
    else:
        ext = StemtraceExtension(settings=config, dependencies=dependencies)
        app = FastAPI(lifespan=ext.lifespan)
        app.include_router(ext.router, prefix=prefix)
    return stack.enter_context(TestClient(app, raise_server_exceptions=False))


@pytest.fixture
def site(db_target: str) -> Iterator[Site]:
    """``site(events)``: the standalone app on a store holding ``events``.

    ``site(events, prefix="/x")`` mounts a :class:`StemtraceExtension` under
    ``/x`` in a fresh FastAPI app instead; ``dependencies=`` guard it.
    Other keyword arguments go to :class:`Settings`.
    """
    with ExitStack() as stack:
        yield partial(serve, stack, db_target)


def html(response: Any, status: int = 200) -> BeautifulSoup:
    assert response.status_code == status, (response.url, response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/html"), response.headers
    return BeautifulSoup(response.text, "html.parser")


def page(client: TestClient, url: str, status: int = 200, **query: Any) -> BeautifulSoup:
    # (httpx drops a query string already in ``url`` when given ``params``, even empty)
    return html(client.get(url, params=query) if query else client.get(url), status)


def one(soup: BeautifulSoup | Tag, selector: str) -> Tag:
    found = soup.select(selector)
    assert len(found) == 1, (selector, found)
    return found[0]


def text(tag: Tag | None) -> str:
    assert tag is not None
    return " ".join(tag.get_text().split())


def row_ids(soup: BeautifulSoup) -> list[str]:
    return [str(tr["id"]).removeprefix("task-") for tr in soup.select("tr[id^=task-]")]


def label(badge: Tag) -> str:
    """A state badge's words, without the decorative icon hidden from screen readers."""
    icon = badge.find("span", attrs={"aria-hidden": "true"})
    assert icon is not None and icon.get_text().strip(), badge
    return "".join(badge.find_all(string=True, recursive=False)).strip()


def links(soup: BeautifulSoup | Tag) -> list[str]:
    return [str(a["href"]) for a in soup.select("a[href]")]


def value_box(soup: BeautifulSoup, heading: str) -> Tag:
    [box] = [div for div in soup.select("div.value") if text(div.h3) == heading]
    return box


def htmx(target: str) -> dict[str, str]:
    """The headers htmx sends when it swaps into the element with id ``target``."""
    return {"HX-Request": "true", "HX-Target": target}


def vary(response: Any) -> list[str]:
    return [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


def urls_in(soup: BeautifulSoup) -> list[tuple[str, str, str]]:
    """``(tag, attribute, url)`` for every URL-valued attribute of the page."""
    tags = soup.find_all(True)  # one walk of the page, not one per attribute
    return [
        (tag.name, attribute, str(tag[attribute]))
        for attribute in URL_ATTRIBUTES
        for tag in tags
        if attribute in tag.attrs
    ]


def assert_no_active_content(soup: BeautifulSoup, prefix: str = "") -> None:
    """Only stemtrace's own script files run: no inline script, handler or javascript: URL."""
    for script in soup.find_all("script"):
        if script.get("type") == "application/json":  # a data block: never executed
            assert not script.get("src"), script
            continue
        assert script.get("src", "").startswith(f"{prefix}/static/"), script
        assert not script.get_text().strip(), script
    handlers = [
        (tag.name, name)
        for tag in soup.find_all(True)
        for name in tag.attrs
        if name.startswith("on")
    ]
    assert handlers == []
    for name, attribute, url in urls_in(soup):
        assert not url.strip().lower().startswith("javascript:"), (name, attribute, url)
    assert writes(soup) == []


def writes(soup: BeautifulSoup) -> list[Tag]:
    """Elements that would make htmx send anything but a GET."""
    return [tag for tag in soup.find_all(True) if any(name in tag.attrs for name in HTMX_WRITES)]


def csp_of(response: Any) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    found: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        found[name] = sources
    return found


def site_of(
    store: Backend, consumer_status: Callable[[], dict[str, Any] | None] | None = None
) -> RouteSite:
    """The routes' dependencies on ``store``, with ``consumer_status`` for ``/api/health``."""
    if consumer_status is None:
        return RouteSite(store=store, broadcaster=Broadcaster())
    return RouteSite(store=store, broadcaster=Broadcaster(), consumer_status=consumer_status)
