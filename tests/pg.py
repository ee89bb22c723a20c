"""PostgreSQL for the tests: the machine's server, a database of its own per test, and
a workload to feed it and a SQLite file alike (``fixed_clock`` makes their writers agree
on the time).

The test command (``scripts/test``) starts a server on 127.0.0.1:5432 that
trusts the ``postgres`` user; a test that needs it fails (never skips) when
nothing answers there. Each test creates a database with a unique name and
drops it afterwards, so tests cannot see each other's rows.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from stemtrace.core.events import Event
from stemtrace.store import Skip, Store
from stemtrace.store.pg import PgStore
from tests.factories import (
    W1,
    W2,
    catalog,
    chain_events,
    chord_events,
    event,
    registry_entry,
    retried_twice,
    worker_event,
)

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_ADMIN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def pg_url_of(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The shared server's maintenance database URL; it must answer."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} is not answering ({exc}); "
            "run the test command (scripts/test), which starts it"
        )
    return PG_ADMIN


def create_database(admin: str, template: str | None = None) -> str:
    """A new database's name; a copy of the database ``template`` when given (to which
    nothing may be connected: PostgreSQL refuses to copy a database in use)."""
    name = f"stemtrace_test_{uuid.uuid4().hex[:16]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(create)
    return name


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


@contextmanager
def database(admin: str, template: str | None = None) -> Iterator[str]:
    """The URL of a database of its own (empty, or a copy of ``template``), dropped after."""
    name = create_database(admin, template)
    try:
        yield pg_url_of(name)
    finally:
        drop_database(admin, name)


def database_of(url: str) -> str:
    """The name of the database a URL of :func:`pg_url_of` names."""
    return urlsplit(url).path.lstrip("/")


@pytest.fixture(scope="session")
def pg_migrated(pg_server: str) -> Iterator[str]:
    """The name of a database migrated once for the session (never opened again): the
    template of the tests' migrated databases (``tests.site.db_target``), as SQLite's
    are copies of one migrated file; it spares each the migrations (about half a second)."""
    with database(pg_server) as url:
        PgStore(url).close()
        yield database_of(url)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """This test's own empty database on the shared server, dropped afterwards."""
    with database(pg_server) as url:
        yield url


NOW = 1_764_000_000.0
"""The writers' clock in these tests, so that ``updated_at`` compares too."""

TABLES = (
    "tasks, history, workers, worker_gaps, registry, cursors, skipped, skipped_samples,"
    " planned, queue_depths, queue_depth_minutes"
)


CLOCKS = (
    "stemtrace.store.ingest.time",
    "stemtrace.store.pg.writer.time",
    "stemtrace.store.pg.retention.time",
)
"""The writers' clocks :func:`fixed_clock` sets to :data:`NOW`."""


def fix_clock(monkeypatch: pytest.MonkeyPatch, *more: str) -> None:
    """The writers' clocks (and the modules' ``time`` that ``more`` names) at :data:`NOW`."""
    clock = types.SimpleNamespace(time=lambda: NOW)
    for target in (*CLOCKS, *more):
        monkeypatch.setattr(target, clock)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_clock(monkeypatch)


@contextmanager
def pg_store_of(admin: str, template: str) -> Iterator[PgStore]:
    """A store of its own on a copy of the migrated database ``template``, dropped after:
    for a module's fixture, which ``pg`` (a test's own) cannot serve."""
    with database(admin, template) as url:
        store = PgStore(url)
        try:
            yield store
        finally:
            store.close()


@contextmanager
def filled_pair(
    sqlite_path: Path, admin: str, template: str, events: list[Event], batch: int, *clocks: str
) -> Iterator[tuple[Store, PgStore]]:
    """The SQLite store at ``sqlite_path`` (a migrated copy) and a PostgreSQL store made from
    ``template``, both fed ``events`` in batches of ``batch`` (:func:`ingest_both`), with the
    writers' clock (and ``clocks``) fixed at NOW while they are open: a module's stores for
    tests that only read them."""
    with pytest.MonkeyPatch.context() as monkeypatch, pg_store_of(admin, template) as pg:
        fix_clock(monkeypatch, *clocks)
        sqlite = Store(sqlite_path)
        try:
            ingest_both(sqlite, pg, events, batch=batch)
            yield sqlite, pg
        finally:
            sqlite.close()


@pytest.fixture
def pg(pg_url: str) -> Iterator[PgStore]:
    """This test's own database, opened (migrated) as stemtrace's store."""
    store = PgStore(pg_url)
    yield store
    store.close()


def celery_copies(events: list[Event]) -> list[Event]:
    """What Celery's own events said of the same moments: repr strings, other eids."""
    found = []
    for original in events:
        copy = {k: v for k, v in original.items() if k not in ("args", "kwargs", "result")}
        copy.update(eid=uuid.uuid4().hex, source="celery", args=repr(original.get("args", ())))
        found.append(event(**copy))
    return found


def workers(t: float) -> list[Event]:
    """Two workers: definitions announced twice, heartbeats with a silence, an absence."""
    defs = [registry_entry("proj.tasks.add", signature="(x, y)"), registry_entry("proj.t.b")]
    online = {"sw_ver": "5.4.0", "pool": "prefork", "concurrency": 4, "queues": ["celery"]}
    found = [
        worker_event("worker_online", W1, t, freq=2.0, tasks=defs, **online),
        worker_event("worker_online", W2, t + 1, freq=2.0, tasks=defs[:1], **online),
    ]
    for i, at in enumerate((2.0, 4.0, 40.0, 42.0, 44.0)):
        beat = {"freq": 2.0, "active": i % 3, "processed": i * 5, "loadavg": [0.1 * i, 0.5, 1.0]}
        found.append(worker_event("worker_heartbeat", W1, t + at, **beat))
    found += [
        worker_event("worker_offline", W2, t + 50),
        worker_event("worker_online", W2, t + 90, freq=2.0, tasks=defs, **online),
        worker_event("worker_heartbeat", W2, t + 92, freq=2.0, active=1, processed=3),
    ]
    return found


def workload() -> list[Event]:
    t = NOW - 3000
    email = [e for e in catalog(NOW) if e.get("name") == "proj.tasks.send_email"]
    return [
        *catalog(NOW),
        *retried_twice(t),
        *chain_events(t + 100, "FAILURE"),
        *chord_events(t + 200),
        *celery_copies(email[:3] + retried_twice(t)[:2]),
        *workers(t),
    ]


def ingest_both(
    sqlite: Store, pg: PgStore, events: list[Event], batch: int, skips: bool = True
) -> None:
    lite, post = sqlite.open_writer(), pg.open_writer()
    for n, start in enumerate(range(0, len(events), batch)):
        chunk = events[start : start + batch]
        skipped = [Skip(f"bad frame {n}", f"{n}-0", b"junk \xff")] if skips and n % 3 == 0 else []
        cursor = ("redis:stemtrace:events", f"{start}-0")
        lite.ingest(chunk, cursor, skipped)
        post.ingest(chunk, cursor, skipped)
