"""Ingest rules: precedence over arrival order, idempotence, retention.

What is stored and read back runs once per backend (``backend``: SQLite and
PostgreSQL). SQLite's own file runs on SQLite only: reopening it, migrating a
file of an older version, its history records' layout, VACUUM, and the slices
and far-future rows of its ``Retention``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.store import Backend, Store, Upkeep, open_store, queries
from stemtrace.store.ingest import Ingestor
from stemtrace.store.retention import Retention
from tests.factories import examples, task_event
from tests.support import stored_events


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    found = Store(db_path)
    yield found
    found.close()


def retried_twice(task_id: str = "t1") -> list[dict[str, Any]]:
    """A task that failed twice, was retried, and then succeeded: its whole life."""
    return [
        task_event("sent", task_id, 1.0, retries=0, args=[1], kwargs={}, trace_id="tr",
                   root_id=task_id),
        task_event("received", task_id, 1.1, retries=0, worker="celery@w1"),
        task_event("started", task_id, 1.2, retries=0, worker="celery@w1"),
        task_event("sent", task_id, 1.3, retries=1, parent_id=task_id, root_id=task_id),
        task_event("retry", task_id, 1.31, retries=0, attempt=1, exc_type="ConnectionError",
                   exc_message="attempt 1 failed", traceback="Traceback...1"),
        task_event("received", task_id, 1.4, retries=1, worker="celery@w2"),
        task_event("started", task_id, 1.5, retries=1, worker="celery@w2"),
        task_event("sent", task_id, 1.6, retries=2, parent_id=task_id, root_id=task_id),
        task_event("retry", task_id, 1.61, retries=1, attempt=2, exc_type="ConnectionError",
                   exc_message="attempt 2 failed", traceback="Traceback...2"),
        task_event("received", task_id, 1.7, retries=2, worker="celery@w1"),
        task_event("started", task_id, 1.8, retries=2, worker="celery@w1"),
        task_event("succeeded", task_id, 1.9, retries=2, worker="celery@w1", result=7,
                   runtime=0.1),
    ]  # fmt: skip


def row(store: Backend, task_id: str = "t1") -> dict[str, Any]:
    found = store.get_task(task_id)
    assert found is not None
    return found


def test_a_retried_task_ends_in_one_row(backend: Backend) -> None:
    backend.open_writer().ingest(retried_twice())
    task = row(backend)
    assert task["state"] == "SUCCESS" and task["retries"] == 2
    assert task["parent_id"] is None  # a retry's self-parent is not a parent
    assert task["args"] == [1] and task["result"] == 7 and task["trace_id"] == "tr"
    assert task["sent_at"] == 1.0 and task["started_at"] == 1.2 and task["finished_at"] == 1.9
    assert task["worker"] == "celery@w1" and task["queue_wait"] == pytest.approx(0.2)


# Each example writes tasks of its own (a new id) into the test's one store: a store per
# example would cost PostgreSQL a database each.
EXAMPLES_IN_ONE_STORE = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings(EXAMPLES_IN_ONE_STORE, max_examples=examples(60))
@given(st.permutations(list(range(12))), st.integers(min_value=1, max_value=12))
def test_any_arrival_order_and_batching_gives_the_same_row(
    backend: Backend, order: list[int], batch: int
) -> None:
    task_id = uuid.uuid4().hex
    life = retried_twice(task_id)
    shuffled = [life[i] for i in order]
    writer = backend.open_writer()
    for start in range(0, len(shuffled), batch):
        writer.ingest(shuffled[start : start + batch])
    task = row(backend, task_id)
    assert (task["state"], task["retries"], task["result"]) == ("SUCCESS", 2, 7)
    assert (task["sent_at"], task["started_at"], task["finished_at"]) == (1.0, 1.2, 1.9)
    assert task["worker"] == "celery@w1" and task["args"] == [1]
    history = backend.task_events(task_id)
    assert [e["ts"] for e in history] == [e["ts"] for e in life]


@settings(EXAMPLES_IN_ONE_STORE, max_examples=examples(40))
@given(st.lists(st.sampled_from(["sent", "received", "started", "retry"]), max_size=6),
       st.sampled_from(["succeeded", "failed", "revoked", "rejected"]))  # fmt: skip
def test_a_terminal_state_wins_whatever_comes_after(
    backend: Backend, later: list[str], terminal: str
) -> None:
    task_id = uuid.uuid4().hex
    writer = backend.open_writer()
    writer.ingest([task_event(terminal, task_id, 5.0)])
    writer.ingest([task_event(kind, task_id, 6.0 + i, retries=0) for i, kind in enumerate(later)])
    expected = {"succeeded": "SUCCESS", "failed": "FAILURE", "revoked": "REVOKED",
                "rejected": "REJECTED"}[terminal]  # fmt: skip
    assert row(backend, task_id)["state"] == expected


def test_redelivered_events_change_nothing(backend: Backend) -> None:
    writer = backend.open_writer()
    life = retried_twice()
    writer.ingest(life)
    before = row(backend)
    history = backend.task_events("t1")
    writer.ingest(life[3:7])
    writer.ingest(list(reversed(life)) + life[:2])  # twice in one batch too
    after = row(backend)
    before.pop("updated_at"), after.pop("updated_at")
    assert after == before
    assert len(history) == len(life)
    assert backend.task_events("t1") == history


def test_waiting_for_a_retry_is_its_own_state(backend: Backend) -> None:
    backend.open_writer().ingest(retried_twice()[:5])
    assert row(backend)["state"] == "RETRY"


def test_retention_by_count_keeps_the_newest_tasks_with_their_history(
    backend: Backend,
) -> None:
    now = time.time()
    ids = [f"t{i:03}" for i in range(50)]
    backend.open_writer().ingest(
        [task_event("sent", tid, now - 600 + i, name="proj.t") for i, tid in enumerate(ids)]
        + [task_event("succeeded", tid, now - 500 + i) for i, tid in enumerate(ids)]
    )
    writer = backend.open_writer(Upkeep(max_tasks=20))
    assert writer.upkeep(caught_up=True)[0] == 30
    kept = [task_id for task_id in ids if backend.get_task(task_id) is not None]
    assert kept == ids[30:]
    assert all(len(backend.task_events(task_id)) == 2 for task_id in kept)
    assert all(backend.task_events(task_id) == [] for task_id in ids[:30])
    assert backend.counts()["tasks"] == 20  # the rollups forgot them too
    assert backend.tasks_by_state() == {"proj.t": {"SUCCESS": 20}}


def test_retention_by_count_and_by_age(store: Store) -> None:
    """SQLite's ``Retention``: a bounded slice per step, the age to the second."""
    ingestor = Ingestor(store.writer())
    ingestor.ingest([task_event("succeeded", f"t{i:03}", 1000.0 + i) for i in range(50)])
    pruned = Retention(max_tasks=20, slice_size=7).step(store.writer(), now=2000.0)
    assert pruned == 7  # one bounded slice per step
    retention = Retention(max_tasks=20, slice_size=7, interval=0)
    while retention.step(store.writer(), now=2000.0):
        pass
    conn = store.reader().conn
    left = [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY id")]
    assert left == [f"t{i:03}" for i in range(30, 50)]
    assert stored_events(conn) == 20
    by_age = Retention(max_age=10.0, interval=0)
    while by_age.step(store.writer(), now=1049.5):
        pass
    assert [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY id")] == [
        f"t{i:03}" for i in range(40, 50)
    ]


def test_the_schema_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    first = Store(path)
    Ingestor(first.writer()).ingest(retried_twice())
    first.close()
    second = Store(path)  # migrations already applied: nothing to redo
    assert row(second)["state"] == "SUCCESS"
    second.close()


def test_what_was_written_is_read_by_the_next_store_opened(db_target: str) -> None:
    first = open_store(db_target)
    first.open_writer().ingest(retried_twice())
    first.close()
    second = open_store(db_target)
    try:
        assert row(second)["state"] == "SUCCESS"
        assert len(second.task_events("t1")) == len(retried_twice())
    finally:
        second.close()


def test_history_written_as_json_documents_is_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store from before migration 5 (one JSON document per event) keeps its history
    through migration 5 (a row per event, in columns) and 7 (records per task)."""
    path = tmp_path / "old.db"
    Store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        DROP TABLE history;
        CREATE TABLE events (task_id TEXT NOT NULL, eid TEXT NOT NULL, kind TEXT NOT NULL,
                             ts REAL NOT NULL, data TEXT NOT NULL);
        CREATE UNIQUE INDEX events_task ON events (task_id, eid);
        DELETE FROM _sqlite_migrations
            WHERE name IN ('m005_history_columns', 'm007_history_by_task');
        """
    )
    old = [
        ("t1", "e1", "sent", 1.0, {"host": "web", "pid": 1, "name": "proj.t", "queue": "q"}),
        ("t1", "e2", "retry", 2.0, {"host": "celery@w", "pid": 2, "worker": "celery@w",
                                    "retries": 0, "attempt": 1, "exc_type": "KeyError",
                                    "traceback": "Traceback ...", "retry_at": 3.0}),
        ("t1", "e3", "started", 3.0, {"host": "celery@w", "pid": 2, "source": "celery",
                                      "args": "(1,)", "retries": 1}),
    ]  # fmt: skip
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
        [(t, e, k, ts, json.dumps(data)) for t, e, k, ts, data in old],
    )
    conn.execute(
        "INSERT INTO tasks (id, name, state, state_attempt, state_rank, state_ts, seen_at,"
        " updated_at) VALUES ('t1', 'proj.t', 'STARTED', 1, 2, 3.0, 1.0, 3.0)"
    )
    conn.close()
    with caplog.at_level("WARNING", logger="stemtrace"):
        migrated = Store(path)
    assert "upgrading" in caplog.text and "m007_history_by_task" in caplog.text
    history = queries.task_events(migrated.reader().conn, "t1")
    migrated.close()
    assert history == [
        {"eid": "e1", "kind": "sent", "ts": 1.0, "task_id": "t1", "host": "web", "pid": 1},
        {"eid": "e2", "kind": "retry", "ts": 2.0, "task_id": "t1", "host": "celery@w", "pid": 2,
         "worker": "celery@w", "retries": 0, "attempt": 1, "exc_type": "KeyError",
         "traceback": "Traceback ...", "retry_at": 3.0},
        {"eid": "e3", "kind": "started", "ts": 3.0, "task_id": "t1", "host": "celery@w",
         "pid": 2, "source": "celery", "args": "(1,)", "retries": 1},
    ]  # fmt: skip


UNKNOWN_FIELDS = [
    task_event("sent", "t1", 1.0, args=[1], queue="q", future_field={"x": [1]}),
    task_event("revoked", "t1", 2.0, terminated=True, signum=15, worker="celery@w1"),
]


def test_a_history_event_keeps_what_the_task_row_does_not(backend: Backend) -> None:
    backend.open_writer().ingest(UNKNOWN_FIELDS)
    first, second = backend.task_events("t1")
    assert "args" not in first and "queue" not in first and first["future_field"] == {"x": [1]}
    assert second["terminated"] is True and second["worker"] == "celery@w1"
    assert second["signum"] == 15


def test_a_history_row_holds_the_unknown_fields_as_its_records_extra(store: Store) -> None:
    Ingestor(store.writer()).ingest(UNKNOWN_FIELDS)
    conn = store.reader().conn
    [(text,)] = conn.execute(
        "SELECT events FROM history JOIN tasks ON tasks.rowid = task_rowid WHERE id = 't1'"
    ).fetchall()
    assert [record[-1] for record in json.loads(text)] == [  # extra
        {"future_field": {"x": [1]}},
        {"signum": 15, "terminated": True},
    ]


def test_vacuum_keeps_each_history_with_its_task(tmp_path: Path) -> None:
    """History rows (and search documents) name tasks by rowid, which VACUUM must keep."""
    store = Store(tmp_path / "v.db")
    ingestor = Ingestor(store.writer())
    for i in range(30):
        ingestor.ingest([{**e, "ts": e["ts"] + 10 * i} for e in retried_twice(f"t{i:02}")])
    retention = Retention(max_tasks=20, interval=0)
    while retention.step(store.writer(), now=2000.0):
        pass
    conn = store.reader().conn
    kept = [row[0] for row in conn.execute("SELECT id FROM tasks")]
    assert len(kept) == 20
    before = {task_id: queries.task_events(conn, task_id) for task_id in kept}
    store.writer().execute("VACUUM")
    conn = store.reader().conn
    assert {task_id: queries.task_events(conn, task_id) for task_id in before} == before
    assert all(len(history) == len(retried_twice()) for history in before.values())
    store.close()


def test_retention_forgets_tasks_from_the_future_even_when_keeping_everything(
    store: Store,
) -> None:
    """Stored by versions that took any time: a far-future row would never age out."""
    now = time.time()
    ingestor = Ingestor(store.writer())
    times = {"future": 1e15, "inf": float("inf"), "now": now, "old": now - 86_400 * 30}
    ingestor.ingest([task_event("sent", task_id, ts) for task_id, ts in times.items()])
    assert Retention().step(store.writer(), now=now) == 2
    ids = {r[0] for r in store.reader().conn.execute("SELECT id FROM tasks")}
    assert ids == {"now", "old"}
