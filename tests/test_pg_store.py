"""PostgreSQL's store against SQLite's: the same batches leave the same rows in both.

Every column of every task, every history record, the workers, their gaps, the
registry, planned ids, cursors and skipped input are compared after the same
events went into a SQLite file and a PostgreSQL database, in order, shuffled,
re-delivered. Then what only PostgreSQL has: migrations under an advisory lock,
the cursor in the batch's transaction, transient failures, day partitions.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.store import Store, Upkeep
from stemtrace.store.ingest import TASK_COLUMNS
from stemtrace.store.pg import PgStore, is_transient
from stemtrace.store.pg import writer as pg_writer
from stemtrace.store.pg.days import DAILY, DAY, days_of
from stemtrace.store.pg.schema import MIGRATION_LOCK, MIGRATIONS
from tests.factories import W1, task_event
from tests.pg import NOW, TABLES, ingest_both, workload
from tests.site import copy_of
from tests.support import free_port

pytestmark = pytest.mark.usefixtures("fixed_clock")


def _rows(conn: Any, query: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(query).fetchall()]


def contents(conn: Any) -> dict[str, Any]:
    """Everything ingest wrote, in a form both backends give alike."""
    history: dict[str, list[str]] = {}
    for task_id, records in _rows(
        conn, "SELECT t.id, h.events FROM history AS h JOIN tasks AS t ON t.rowid = h.task_rowid"
    ):
        history.setdefault(task_id, []).append(records)
    registry = {
        row[0]: (*row[1:-1], sorted(json.loads(row[-1])))
        for row in _rows(
            conn,
            "SELECT name, module, signature, queue, max_retries, default_retry_delay,"
            " autoretry_for, retry_backoff, rate_limit, time_limit, soft_time_limit, acks_late,"
            " ignore_result, updated_at, retry_policy, workers FROM registry",
        )
    }
    return {
        "tasks": _rows(conn, f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY id"),
        "history": {task_id: sorted(rows) for task_id, rows in history.items()},
        "workers": _rows(conn, "SELECT * FROM workers ORDER BY hostname"),
        "gaps": _rows(conn, 'SELECT hostname, start, "end" FROM worker_gaps ORDER BY 1, 2'),
        "registry": registry,
        "planned": _rows(
            conn,
            "SELECT p.id, t.id FROM planned AS p JOIN tasks AS t ON t.rowid = p.task_rowid"
            " ORDER BY 1",
        ),
        "cursors": _rows(conn, "SELECT * FROM cursors ORDER BY source"),
        "skipped": _rows(conn, "SELECT * FROM skipped ORDER BY reason"),
        "samples": _rows(
            conn, "SELECT at, source, place, reason, sample FROM skipped_samples ORDER BY id"
        ),
    }


def assert_same(sqlite: Store, pg: PgStore) -> dict[str, Any]:
    """What both stores hold, once checked equal part by part."""
    lite = sqlite3.connect(sqlite.path)
    try:
        expected = contents(lite)
    finally:
        lite.close()
    with pg.connection() as conn:
        found = contents(conn)
    assert expected["tasks"], "the workload stored no task"
    for part, rows in expected.items():
        assert found[part] == rows, part
    return expected


def test_in_order_both_backends_store_the_same(tmp_path: Path, migrated: Path, pg: PgStore) -> None:
    sqlite = Store(copy_of(migrated, tmp_path / "s.db"))
    try:
        ingest_both(sqlite, pg, workload(), batch=1000)
        stored = assert_same(sqlite, pg)
        assert all(stored[part] for part in ("gaps", "planned", "samples", "registry"))
    finally:
        sqlite.close()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 60), copies=st.integers(1, 2))
def test_shuffled_and_redelivered_both_backends_store_the_same(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, pg: PgStore,
    seed: int, batch: int, copies: int,
) -> None:  # fmt: skip
    with pg.connection() as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    events = workload() * copies
    random.Random(seed).shuffle(events)
    sqlite = Store(copy_of(migrated, tmp_path_factory.mktemp("s") / "s.db"))
    try:
        ingest_both(sqlite, pg, events, batch)
        assert_same(sqlite, pg)
    finally:
        sqlite.close()


def test_migrations_run_once(pg_url: str) -> None:
    first = PgStore(pg_url)
    second = PgStore(pg_url)
    try:
        assert first.applied == [name for name, _ in MIGRATIONS]
        assert second.applied == []
        with second.connection() as conn:
            done = _rows(conn, "SELECT name FROM stemtrace_migrations")
        assert done == [(name,) for name, _ in MIGRATIONS]
    finally:
        first.close()
        second.close()


def test_two_servers_starting_at_once_migrate_once_and_both_write(pg_url: str) -> None:
    barrier = threading.Barrier(2)
    stores: list[PgStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PgStore(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == []
        assert sorted(len(store.applied) for store in stores) == [0, len(MIGRATIONS)]
        for n, store in enumerate(stores):
            store.open_writer().ingest([task_event("sent", f"t{n}", NOW, name="proj.t")])
        with stores[0].connection() as conn:
            assert _rows(conn, "SELECT id FROM tasks ORDER BY id") == [("t0",), ("t1",)]
    finally:
        for store in stores:
            store.close()


def test_a_planned_link_is_found_through_its_key(pg: PgStore) -> None:
    """The flows list asks, of each task, whether it is a planned link (``planned.id =
    tasks.id``, compared in ``tasks.id``'s collation): ``planned``'s key answers it (m006;
    in the database's own collation it could not, and each task listed scanned the table)."""
    with pg.connection() as conn, conn.transaction():
        collation = "SELECT collation_name FROM information_schema.columns"
        assert _rows(conn, f"{collation} WHERE table_name = 'planned' AND column_name = 'id'") == [
            ("C",)
        ]
        conn.execute("SET LOCAL enable_seqscan = off")
        query = "EXPLAIN SELECT 1 FROM planned WHERE planned.id = 'x' COLLATE \"C\""
        plan = "\n".join(str(row[0]) for row in _rows(conn, query))
        assert "Index Cond: (id = " in plan, plan  # a lookup, not a whole index read


def test_pooled_connections_do_not_compile_queries(pg: PgStore) -> None:
    """JIT is off on every connection of the pool (compiling a query the planner guesses
    costly took seconds where running it took milliseconds)."""
    for _ in range(3):
        with pg.connection() as conn:
            assert _rows(conn, "SHOW jit") == [("off",)]


def test_migrations_wait_for_the_lock(pg_url: str) -> None:
    opened: list[PgStore] = []
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        thread = threading.Thread(target=lambda: opened.append(PgStore(pg_url)))
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not opened  # waiting while another migrates
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        thread.join(30)
    assert len(opened) == 1 and opened[0].applied
    opened[0].close()


def test_the_cursor_commits_with_its_batch(pg: PgStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = pg.open_writer()
    source = "redis:stemtrace:events"
    writer.ingest([task_event("sent", "t1", NOW, name="proj.t")], (source, "1-0"))
    assert writer.position(source) == "1-0"
    other = PgStore(pg.url)
    assert other.open_writer().position(source) == "1-0"  # committed, not cached
    other.close()

    def fail(*args: Any) -> None:
        raise RuntimeError("after the tasks were written")

    monkeypatch.setattr(pg_writer.fleet, "touch", fail)
    with pytest.raises(RuntimeError) as raised:
        writer.ingest([task_event("sent", "t2", NOW, name="proj.t", worker=W1)], (source, "2-0"))
    assert not writer.is_transient(raised.value)
    assert writer.position(source) == "1-0"
    with pg.connection() as conn:
        assert _rows(conn, "SELECT id FROM tasks") == [("t1",)]
        assert _rows(conn, "SELECT count(*) FROM history") == [(1,)]


def test_a_connection_lost_is_transient_and_the_next_batch_reconnects(
    pg: PgStore,
    pg_server: str,
) -> None:
    writer = pg.open_writer()
    writer.ingest([task_event("sent", "t1", NOW, name="proj.t")], ("s", "1"))
    dbname = pg.url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (dbname,),
        )
    batch = [task_event("started", "t1", NOW + 1, worker=W1)]
    with pytest.raises(psycopg.Error) as raised:
        writer.ingest(batch, ("s", "2"))
    assert writer.is_transient(raised.value), raised.value
    writer.ingest(batch, ("s", "2"))  # written again, whole, on a new connection
    assert writer.position("s") == "2"
    with pg.connection() as conn:
        assert _rows(conn, "SELECT state FROM tasks") == [("STARTED",)]


def test_a_server_that_does_not_answer_is_transient() -> None:
    with pytest.raises(psycopg.OperationalError) as raised:
        PgStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout=1.0)
    assert is_transient(raised.value)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.DiskFull(), True),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.InvalidTextRepresentation(), False),
        (psycopg.errors.UndefinedColumn(), False),
        (ValueError("bad event"), False),
        (OSError("network"), True),
    ],
)
def test_which_failures_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_text_with_a_nul_character_is_stored(pg: PgStore) -> None:
    failed = task_event("failed", "t1", NOW, worker=W1, exc_type="E", exc_message="a\x00b")
    pg.open_writer().ingest([failed], ("s", "1"))
    with pg.connection() as conn:
        assert _rows(conn, "SELECT exc_message FROM tasks") == [("a\ufffdb",)]


def test_history_and_tasks_are_partitioned_by_day_and_retention_drops_old_days(
    pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = pg.open_writer(Upkeep(max_age=7 * DAY))
    monkeypatch.setattr(pg_writer.time, "time", lambda: NOW - 30 * DAY)
    writer.ingest([task_event("sent", "old", NOW - 30 * DAY, name="proj.t")])
    monkeypatch.setattr(pg_writer.time, "time", lambda: NOW)
    writer.ingest([task_event("sent", "new", NOW, name="proj.t")])
    today = int(NOW // DAY)
    with pg.connection() as conn:
        for table in DAILY:
            made = [day for day, _ in days_of(conn, table)]
            assert made == [today - 30, today - 29, today, today + 1], table
        assert _rows(conn, "SELECT id, day FROM tasks ORDER BY day") == [
            ("old", today - 30),
            ("new", today),
        ]
    pruned, _ = writer.upkeep(caught_up=True)
    assert pruned == 1
    with pg.connection() as conn:
        assert _rows(conn, "SELECT id FROM tasks") == [("new",)]
        for table in DAILY:
            assert [day for day, _ in days_of(conn, table)] == [today, today + 1], table
        assert _rows(conn, "SELECT count(*) FROM history") == [(1,)]


def test_queue_depths_are_recorded_as_sqlite_records_them(
    tmp_path: Path, migrated: Path, pg: PgStore
) -> None:
    sqlite = Store(copy_of(migrated, tmp_path / "s.db"))
    samples = [
        ({"celery": (3, 1, None), "mail": (None, None, "NOT_FOUND")}, NOW - 70),
        ({"celery": (9, 2, None)}, NOW - 65),
        ({"celery": (4, 2, None), "mail": (0, 0, None)}, NOW - 5),
    ]
    try:
        for writer in (sqlite.open_writer(), pg.open_writer()):
            for sample, at in samples:
                writer.record_depths(sample, at)
        lite = sqlite3.connect(sqlite.path)
        with pg.connection() as conn:
            for query in (
                "SELECT queue, messages, consumers, error, at FROM queue_depths ORDER BY queue",
                "SELECT queue, t, messages FROM queue_depth_minutes ORDER BY queue, t",
            ):
                assert _rows(conn, query) == _rows(lite, query)
                assert _rows(conn, query)
        lite.close()
    finally:
        sqlite.close()


def test_two_writers_at_once_store_what_one_does(
    tmp_path: Path, migrated: Path, pg: PgStore
) -> None:
    """Consumers sharing a stream write their batches side by side: the tasks and their
    histories end as one writer leaves them (a deadlock between the two is transient:
    that batch is written again, as the consumer would)."""
    events = workload() * 2
    random.Random(7).shuffle(events)
    batches = [events[start : start + 9] for start in range(0, len(events), 9)]
    sqlite = Store(copy_of(migrated, tmp_path / "s.db"))
    lite = sqlite.open_writer()
    for batch in batches:
        lite.ingest(batch)
    errors: list[BaseException] = []
    retried: list[BaseException] = []

    def consume(share: list[list[Any]]) -> None:
        writer = pg.open_writer()
        try:
            for batch in share:
                while True:
                    try:
                        writer.ingest(batch)
                        break
                    except psycopg.Error as exc:
                        if not writer.is_transient(exc):
                            raise
                        retried.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(batches[n::2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert all(isinstance(exc, psycopg.errors.DeadlockDetected) for exc in retried), retried
    lite_conn = sqlite3.connect(sqlite.path)
    expected = contents(lite_conn)
    lite_conn.close()
    sqlite.close()
    with pg.connection() as conn:
        found = contents(conn)
    assert found["tasks"] == expected["tasks"]
    assert found["history"] == expected["history"]
