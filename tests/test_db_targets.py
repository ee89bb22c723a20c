"""``--db``: a path or ``sqlite:`` is SQLite, ``postgresql://`` PostgreSQL, others refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from stemtrace.server.app import create_app
from stemtrace.server.extension import StemtraceExtension
from stemtrace.settings import SettingError, Settings
from stemtrace.store import (
    DEFAULT_DB,
    BadTarget,
    Store,
    Target,
    open_store,
    parse_target,
    postgres_driver_missing,
)
from stemtrace.store.pg import PgStore
from stemtrace.store.targets import redacted
from tests.factories import catalog
from tests.pg import pg_url_of
from tests.site import fill, page, row_ids


@pytest.mark.parametrize(
    ("db", "target"),
    [
        ("stemtrace.db", Target("sqlite", "stemtrace.db")),
        ("/data/st.db", Target("sqlite", "/data/st.db")),
        (":memory:", Target("sqlite", ":memory:")),
        ("runs:2024.db", Target("sqlite", "runs:2024.db")),
        ("sqlite:", Target("sqlite", DEFAULT_DB)),
        ("sqlite:rel/st.db", Target("sqlite", "rel/st.db")),
        ("sqlite:///abs/st.db", Target("sqlite", "/abs/st.db")),
        ("SQLite:///abs/st.db", Target("sqlite", "/abs/st.db")),
        (
            "postgresql://postgres@127.0.0.1:5432/stemtrace",
            Target("postgresql", "postgresql://postgres@127.0.0.1:5432/stemtrace"),
        ),
        ("postgres://u@db/st", Target("postgresql", "postgres://u@db/st")),
    ],
)
def test_what_a_db_names(db: str, target: Target) -> None:
    assert parse_target(db) == target


@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("mysql://x", "names a mysql:// database, which stemtrace does not know"),
        ("foo://bar", "names a foo:// database"),
        ("sqlite://host/st.db", "names a host in a SQLite URL"),
        ("postgresql:st", "is not a URL such as postgresql://"),
        ("postgresql://db:port/st", "has a port that is not a number"),
        ("postgresql://u:secret@db", "names no database"),
    ],
)
def test_a_db_stemtrace_cannot_open_is_refused_by_name(db: str, says: str) -> None:
    with pytest.raises(BadTarget, match=says) as raised:
        parse_target(db)
    assert "secret" not in str(raised.value)
    with pytest.raises(SettingError, match=f"^db {says}"):
        Settings(db=db)
    with pytest.raises(SettingError, match=f"^STEMTRACE_DB {says}"):
        Settings.from_env({"STEMTRACE_DB": db})
    with pytest.raises(SettingError, match=f"^db {says}"):
        StemtraceExtension(db=db)


def test_passwords_are_not_shown() -> None:
    assert redacted("postgresql://u:pw@db:5433/st") == "postgresql://u:***@db:5433/st"
    assert redacted("postgresql://u@db/st") == "postgresql://u@db/st"
    assert parse_target("postgresql://u:pw@[::1]/st").shown == "postgresql://u:***@[::1]/st"


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemtrace.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **env},
    )  # fmt: skip


def test_the_cli_refuses_an_unknown_scheme_and_creates_nothing(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", "--db", "mysql://x")
    assert result.returncode == 2
    assert "error: argument --db: names a mysql:// database" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli(tmp_path, "consume", STEMTRACE_DB="mysql://x")
    assert result.returncode == 2
    assert "error: STEMTRACE_DB names a mysql:// database" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_without_psycopg_postgresql_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    url = "postgresql://postgres@127.0.0.1:5432/stemtrace"
    assert postgres_driver_missing() == (
        "selects PostgreSQL, whose driver psycopg is not installed:"
        " pip install 'stemtrace[postgres]'"
    )
    with pytest.raises(SettingError, match=r"^db selects PostgreSQL.*stemtrace\[postgres\]"):
        Settings(db=url)
    with pytest.raises(BadTarget, match=r"stemtrace\[postgres\]"):
        open_store(url)
    assert list(tmp_path.iterdir()) == []  # no directory named postgresql: any more


def test_postgresql_opens_the_postgresql_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(pg_url)
    try:
        assert isinstance(store, PgStore)
        assert store.path == pg_url
        assert store.is_empty()
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []  # no SQLite file, no directory named postgresql:


def test_a_site_on_postgresql_serves_its_pages(pg_url: str) -> None:
    events = catalog(time.time())
    fill(pg_url, events)
    with TestClient(create_app(Settings(db=pg_url, consumer=False))) as client:
        for url in ("/", "/executions", "/problems", "/queues", "/workers", "/registry"):
            page(client, url)
        ids = row_ids(page(client, "/executions"))
        health = client.get("/api/health").json()
    assert sorted(ids) == sorted({e["task_id"] for e in events if "task_id" in e})
    assert health["store"]["path"] == pg_url
    assert health["store"]["tasks"] == len(ids)


def test_an_unreachable_postgresql_is_refused_with_its_reason(
    tmp_path: Path, pg_server: str
) -> None:
    url = pg_url_of("stemtrace_no_such_database")
    with pytest.raises(BadTarget, match='database "stemtrace_no_such_database" does not exist'):
        open_store(url)
    result = _cli(tmp_path, "run", "--db", url)
    assert result.returncode == 2
    assert f"error: --db PostgreSQL store at {url}: connection failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("form", ["sqlite:{rel}", "sqlite://{abs}", "{abs}"])
def test_sqlite_forms_open_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(form.format(rel="sub/st.db", abs=tmp_path / "sub" / "st.db"))
    try:
        assert isinstance(store, Store)
        assert Path(store.path).resolve() == tmp_path / "sub" / "st.db"
    finally:
        store.close()
    assert (tmp_path / "sub" / "st.db").is_file()


def test_sqlite_users_never_import_psycopg() -> None:
    code = (
        "import sys\n"
        "from stemtrace.settings import Settings\n"
        "from stemtrace.store import open_store\n"
        "Settings(db='postgresql://postgres@127.0.0.1:5432/x')\n"
        "open_store(':memory:').close()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('psycopg', 'stemtrace.store.pg'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_server_without_a_consumer_hears_another_writer_on_postgresql(pg_url: str) -> None:
    """Live updates across servers: the consumers' commits reach a server that runs none
    through PostgreSQL's LISTEN, not by watching the database."""
    ext = StemtraceExtension(settings=Settings(db=pg_url, consumer=False))
    heard: list[object] = []
    ext.broadcaster.notify = lambda task_ids, workers=None: heard.append(task_ids)  # type: ignore[method-assign]
    with TestClient(FastAPI(lifespan=ext.lifespan)):
        assert any(t.name == "stemtrace-listen" for t in threading.enumerate())
        deadline = time.time() + 10
        while not heard and time.time() < deadline:
            fill(pg_url, catalog(time.time())[:5])  # another process's writer commits
            time.sleep(0.3)
    assert heard and heard[0] is None  # "something changed": the page asks again
