"""Live updates across servers: a PostgreSQL writer's committed batch wakes a listener on
another connection, which outlives its connection and stops when told. Each test has its
own database, and PostgreSQL notifies a database's listeners only: no other test's
batches are heard."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from stemtrace.core.events import Event
from stemtrace.store.pg import PgStore
from stemtrace.store.pg.listen import APPLICATION_NAME, Change, Listener, parse, payload
from tests.factories import W1, lifecycle, worker_event
from tests.pg import PG_ADMIN

WITHIN = 1.0
"""Seconds a committed batch may take to reach a listener."""
LONG = 15.0
"""Seconds to wait for what takes a reconnection (a fraction of a second unless the
machine is very busy)."""


def batch(tag: str, tasks: int) -> list[Event]:
    """``tasks`` tasks run to success and a heartbeat of one worker."""
    found: list[Event] = []
    for n in range(tasks):
        found += lifecycle(f"{tag}-{n}", "proj.tasks.add", time.time())
    return [*found, worker_event("worker_heartbeat", W1, time.time(), freq=2.0)]


def wait_for(check: Callable[[], bool], timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def next_of(heard: queue.Queue[Change], wanted: Callable[[Change], bool], timeout: float) -> Change:
    """The first change heard within ``timeout`` that is ``wanted`` (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        change = heard.get(timeout=max(0.0, deadline - time.monotonic()))
        if wanted(change):
            return change


@pytest.fixture
def heard() -> queue.Queue[Change]:
    return queue.Queue()


@pytest.fixture
def listener(pg_url: str, heard: queue.Queue[Change]) -> Iterator[Listener]:
    started = Listener(pg_url, heard.put, poll=0.1, backoff=(0.05, 0.5)).start()
    assert started.listening.wait(LONG)
    yield started
    started.stop()


def test_a_committed_batch_wakes_a_listener_on_another_connection(
    pg: PgStore, listener: Listener, heard: queue.Queue[Change]
) -> None:
    writer = pg.open_writer()
    writer.ingest([], ("redis:stemtrace:events", "1-0"))  # nothing written: nothing said
    writer.ingest(batch("first", 3))
    committed = time.monotonic()
    change = heard.get(timeout=WITHIN)
    assert time.monotonic() - committed < WITHIN
    assert change == Change(tasks=3, workers=1)
    writer.ingest(batch("second", 2)[:-1])
    assert heard.get(timeout=WITHIN) == Change(tasks=2, workers=0)
    assert listener.is_alive()


def test_a_listener_outlives_its_connection(
    pg: PgStore, listener: Listener, heard: queue.Queue[Change]
) -> None:
    killed = listener.backend_pid
    assert killed is not None
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        found = admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (killed,)
        ).fetchone()
        assert found == (APPLICATION_NAME,)
        admin.execute("SELECT pg_terminate_backend(%s)", (killed,))
    # Batches committed while it was away are not heard: it says so once it is back.
    assert next_of(heard, lambda change: change.resumed, LONG) == Change(resumed=True)
    assert listener.listening.is_set() and listener.backend_pid not in (None, killed)
    pg.open_writer().ingest(batch("after", 4))
    assert next_of(heard, lambda change: change.tasks == 4, WITHIN) == Change(4, 1)
    assert listener.is_alive()


def test_stop_ends_the_thread_and_its_connection(pg_url: str, listener: Listener) -> None:
    pid = listener.backend_pid
    listener.stop()
    assert not listener.is_alive()
    assert not listener.listening.is_set()
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:

        def gone() -> bool:
            row = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            return row.fetchone() is None

        wait_for(gone)


def test_stop_ends_a_listener_that_cannot_connect(pg_url: str) -> None:
    nowhere = pg_url.rsplit("/", 1)[0] + "/stemtrace_no_such_database"
    attempts: list[float] = []
    waiting = Listener(nowhere, lambda change: None, backoff=(0.05, 0.2))
    real_listen = waiting._listen

    def counted(*, resumed: bool) -> None:
        attempts.append(time.monotonic())
        real_listen(resumed=resumed)

    waiting._listen = counted  # type: ignore[method-assign]
    waiting.start()
    wait_for(lambda: len(attempts) >= 3)  # it keeps trying, waiting between tries
    waiting.stop()
    assert not waiting.is_alive()
    assert not waiting.listening.is_set()


def test_a_failing_callback_does_not_end_the_listener(pg_url: str, pg: PgStore) -> None:
    heard: queue.Queue[Change] = queue.Queue()

    def fails_once(change: Change) -> None:
        heard.put(change)
        if heard.qsize() == 1:
            raise RuntimeError("a subscriber's bug")

    listener = Listener(pg_url, fails_once, poll=0.1).start()
    try:
        assert listener.listening.wait(LONG)
        writer = pg.open_writer()
        writer.ingest(batch("one", 1))
        assert heard.get(timeout=WITHIN) == Change(1, 1)
        writer.ingest(batch("two", 2))
        assert heard.get(timeout=WITHIN) == Change(2, 1)
        assert listener.is_alive()
    finally:
        listener.stop()


def test_the_payload_holds_counts_only() -> None:
    text = payload(12_345, 67)
    assert parse(text) == Change(12_345, 67)
    assert len(text.encode()) < 100  # PostgreSQL refuses payloads of 8000 bytes or more
    assert parse("not json") == Change() == parse('{"tasks": "x"}')
