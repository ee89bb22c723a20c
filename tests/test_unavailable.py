"""A store that cannot answer: 503 with a page or JSON saying so, never a 500, and the
live problem count waits for it. (End to end, a real PostgreSQL stopped under a server:
tests/test_pg_scaling.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bs4 import BeautifulSoup
from fastapi import FastAPI
from psycopg_pool import PoolTimeout
from starlette.testclient import TestClient

from stemtrace.server.app import create_app
from stemtrace.server.extension import StemtraceExtension
from stemtrace.server.watch import Found, count_events
from stemtrace.settings import Settings
from stemtrace.store import is_unavailable

DOWN = psycopg.OperationalError("connection failed: Connection refused\n\tIs the server running?")


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (DOWN, True),
        (PoolTimeout("no connection within 1 s"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.DataError("invalid input syntax"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_the_store_being_unavailable(exc: Exception, unavailable: bool) -> None:
    assert is_unavailable(exc) is unavailable


def broken(ext: StemtraceExtension, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """Every read of the extension's store raises ``exc`` from now on."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    for name in ("list_tasks", "get_task", "counts", "skipped", "size_bytes", "inflight",
                 "workers", "stats", "stats_by", "filter_choices", "registry"):  # fmt: skip
        monkeypatch.setattr(ext.store, name, fail)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[TestClient, StemtraceExtension]]:
    """The extension in a host app, under /st, with its own handlers only."""
    ext = StemtraceExtension(settings=Settings(db=str(tmp_path / "t.db"), consumer=False))
    app = FastAPI(lifespan=ext.lifespan)
    app.include_router(ext.router, prefix="/st")
    with TestClient(app) as client:  # raises what no handler answered
        yield client, ext


@pytest.mark.parametrize("exc", [DOWN, sqlite3.OperationalError("database is locked")])
def test_a_mounted_extension_answers_503_pages_json_and_health(
    mounted: tuple[TestClient, StemtraceExtension], monkeypatch: pytest.MonkeyPatch,
    exc: Exception,
) -> None:  # fmt: skip
    client, ext = mounted
    broken(ext, monkeypatch, exc)
    for path in ("/st/", "/st/executions", "/st/tasks/t-1", "/st/problems"):
        page = client.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 503, path
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["retry-after"] == "5"
        assert page.headers["content-security-policy"]
        soup = BeautifulSoup(page.text, "html.parser")
        assert soup.h1 is not None and soup.h1.get_text() == "The store is unavailable"
        assert soup.code is not None
        assert soup.code.get_text() == f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        css = soup.select_one("link[rel=stylesheet]")
        assert css is not None and css["href"] == "/st/static/stemtrace.css"
    for path in ("/st/api/tasks", "/st/api/tasks/t-1", "/st/api/problems"):
        answer = client.get(path, headers={"Accept": "text/html"})  # JSON all the same
        assert answer.status_code == 503, path
        assert answer.json() == {
            "detail": f"the store is unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        }
    health = client.get("/st/api/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["store"] == {
        "path": ext.store.path,
        "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
    }


def test_the_reason_is_escaped_on_the_page(
    mounted: tuple[TestClient, StemtraceExtension], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, ext = mounted
    broken(ext, monkeypatch, psycopg.OperationalError("<script>alert(1)</script>"))
    page = client.get("/st/executions", headers={"Accept": "text/html"})
    assert page.status_code == 503
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


def test_another_error_is_still_a_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(db=str(tmp_path / "t.db"), consumer=False))
    broken(app.state.stemtrace, monkeypatch, psycopg.DataError("a bug of ours"))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/api/tasks")
    assert answer.status_code == 500
    assert answer.text == "internal error (logged by the server)"


class FlakyWatch:
    """A watch whose looks fail while the store is away, then find one problem."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.looks = 0

    def current(self) -> Found:
        self.looks += 1
        if self.looks <= self.failures:
            raise DOWN
        return Found([{"kind": "lost", "task_id": "t"}], at=0.0)


def test_the_live_problem_count_waits_for_the_store() -> None:
    async def first_message(watch: FlakyWatch) -> dict[str, str]:
        stream = count_events(watch, lambda: False, every=0.01)  # type: ignore[arg-type]
        try:
            return await anext(stream)
        finally:
            await stream.aclose()

    watch = FlakyWatch(failures=3)
    assert asyncio.run(first_message(watch)) == {"event": "problems", "data": "1"}
    assert watch.looks == 4


def test_a_bug_in_the_look_still_ends_the_stream() -> None:
    class Broken:
        def current(self) -> Found:
            raise ValueError("a bug")

    async def first_message() -> dict[str, str]:
        return await anext(count_events(Broken(), lambda: False))  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(first_message())
