"""Ingest rules: precedence over arrival order, idempotence, retention."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemtrace.store import Store, queries
from stemtrace.store.ingest import Ingestor
from stemtrace.store.retention import Retention
from tests.factories import examples, task_event
from tests.site import copy_of
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


def row(store: Store, task_id: str = "t1") -> dict[str, Any]:
    found = queries.get_task(store.reader().conn, task_id)
    assert found is not None
    return found


def test_a_retried_task_ends_in_one_row(store: Store) -> None:
    Ingestor(store.writer()).ingest(retried_twice())
    task = row(store)
    assert task["state"] == "SUCCESS" and task["retries"] == 2
    assert task["parent_id"] is None  # a retry's self-parent is not a parent
    assert task["args"] == [1] and task["result"] == 7 and task["trace_id"] == "tr"
    assert task["sent_at"] == 1.0 and task["started_at"] == 1.2 and task["finished_at"] == 1.9
    assert task["worker"] == "celery@w1" and task["queue_wait"] == pytest.approx(0.2)


@settings(max_examples=examples(60), deadline=None)
@given(st.permutations(list(range(12))), st.integers(min_value=1, max_value=12))
def test_any_arrival_order_and_batching_gives_the_same_row(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, order: list[int], batch: int
) -> None:
    store = Store(copy_of(migrated, tmp_path_factory.mktemp("p") / "p.db"))
    try:
        life = retried_twice()
        shuffled = [life[i] for i in order]
        ingestor = Ingestor(store.writer())
        for start in range(0, len(shuffled), batch):
            ingestor.ingest(shuffled[start : start + batch])
        task = row(store)
        assert (task["state"], task["retries"], task["result"]) == ("SUCCESS", 2, 7)
        assert (task["sent_at"], task["started_at"], task["finished_at"]) == (1.0, 1.2, 1.9)
        assert task["worker"] == "celery@w1" and task["args"] == [1]
        history = queries.task_events(store.reader().conn, "t1")
        assert [e["ts"] for e in history] == [e["ts"] for e in life]
    finally:
        store.close()


@settings(max_examples=examples(40), deadline=None)
@given(st.lists(st.sampled_from(["sent", "received", "started", "retry"]), max_size=6),
       st.sampled_from(["succeeded", "failed", "revoked", "rejected"]))  # fmt: skip
def test_a_terminal_state_wins_whatever_comes_after(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, later: list[str], terminal: str
) -> None:
    store = Store(copy_of(migrated, tmp_path_factory.mktemp("t") / "t.db"))
    try:
        ingestor = Ingestor(store.writer())
        ingestor.ingest([task_event(terminal, "t1", 5.0)])
        ingestor.ingest(
            [task_event(kind, "t1", 6.0 + i, retries=0) for i, kind in enumerate(later)]
        )
        expected = {"succeeded": "SUCCESS", "failed": "FAILURE", "revoked": "REVOKED",
                    "rejected": "REJECTED"}[terminal]  # fmt: skip
        assert row(store)["state"] == expected
    finally:
        store.close()


def test_redelivered_events_change_nothing(store: Store) -> None:
    ingestor = Ingestor(store.writer())
    life = retried_twice()
    ingestor.ingest(life)
    before = row(store)
    history = queries.task_events(store.reader().conn, "t1")
    ingestor.ingest(life[3:7])
    ingestor.ingest(list(reversed(life)) + life[:2])  # twice in one batch too
    after = row(store)
    before.pop("updated_at"), after.pop("updated_at")
    assert after == before
    assert len(history) == len(life)
    assert queries.task_events(store.reader().conn, "t1") == history


def test_waiting_for_a_retry_is_its_own_state(store: Store) -> None:
    Ingestor(store.writer()).ingest(retried_twice()[:5])
    assert row(store)["state"] == "RETRY"


def test_retention_by_count_and_by_age(store: Store) -> None:
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


def test_a_history_row_keeps_what_the_task_row_does_not(store: Store) -> None:
    Ingestor(store.writer()).ingest(
        [
            task_event("sent", "t1", 1.0, args=[1], queue="q", future_field={"x": [1]}),
            task_event("revoked", "t1", 2.0, terminated=True, signum=15, worker="celery@w1"),
        ]
    )
    conn = store.reader().conn
    [(text,)] = conn.execute(
        "SELECT events FROM history JOIN tasks ON tasks.rowid = task_rowid WHERE id = 't1'"
    ).fetchall()
    assert [record[-1] for record in json.loads(text)] == [  # extra
        {"future_field": {"x": [1]}},
        {"signum": 15, "terminated": True},
    ]
    first, second = queries.task_events(conn, "t1")
    assert "args" not in first and "queue" not in first and first["future_field"] == {"x": [1]}
    assert second["terminated"] is True and second["worker"] == "celery@w1"


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
