"""PostgreSQL's tasks partitioned by day (migration m005).

A task's row lives in the partition of the day it was first written: an event
that comes days later updates it there; writers at once on the same new tasks,
also on either side of midnight, store each once; retention by age drops whole
days, and what is left reads as SQLite's store reads after forgetting the same
tasks; a store written before m005 is converted, rows, histories and counts kept.
Each test has its own database.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from stemtrace.core.events import Event
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store, TaskFilters, Upkeep
from stemtrace.store.ingest import TASK_COLUMNS
from stemtrace.store.lists import FlowFilters
from stemtrace.store.pg import PgStore, schema
from stemtrace.store.pg import days as pg_days
from stemtrace.store.pg import retention as pg_retention
from stemtrace.store.pg import writer as pg_writer
from stemtrace.store.pg.retention import PgRetention
from stemtrace.store.retention import Retention
from tests.factories import (
    CHORD_GROUP,
    FANOUT,
    STEP,
    W1,
    W2,
    chain_events,
    chord_events,
    lifecycle,
    retried_twice,
    task_event,
)
from tests.pg import NOW, create_database, drop_database, pg_url_of
from tests.site import copy_of

pytestmark = pytest.mark.usefixtures("fixed_clock")

DAY = pg_days.DAY
TODAY = int(NOW // DAY)
FIRST = TODAY - 3
"""The first of the three days the scenarios write on."""
NAMES = ("proj.add", "proj.mul", "<script>alert(1)</script>")


def rows(conn: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(query, params or None).fetchall()]


def at(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The writers' clock (both backends') reads ``now``."""
    monkeypatch.setattr(pg_writer.time, "time", lambda: now)


def lifecycles(seed: int, tasks: int, start: float, hours: float = 18) -> list[Event]:
    chance = random.Random(seed)
    found: list[Event] = []
    for n in range(tasks):
        found += lifecycle(
            f"t-{seed}-{n}",
            chance.choice(NAMES),
            start + chance.uniform(0, hours * 3600),
            chance.choice(("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "PENDING")),
            worker=chance.choice((W1, W2)),
            runtime=chance.choice((0.004, 0.3, 2.5)),
            exc=("proj.Boom", chance.choice(("disk full", "timed out"))),
            trace_id=f"trace-{seed}-{n % 3}",
        )
    return found


def three_days() -> list[list[Event]]:
    """What is written on each of three days: tasks seen that day (a chain on the first,
    a chord and a retried task on the second), and on the third a backlog of tasks seen
    on the first day and the last events of some of the first day's tasks."""
    days = [lifecycles(10 + k, 25, (FIRST + k) * DAY + 3600) for k in range(3)]
    days[0] += chain_events(FIRST * DAY + 7200, "FAILURE")
    days[1] += chord_events((FIRST + 1) * DAY + 7200) + retried_twice((FIRST + 1) * DAY + 9000)
    late = [e for e in days[0] if e["kind"] in ("succeeded", "failed")][:6]
    days[0] = [e for e in days[0] if e not in late]
    days[2] += late + lifecycles(20, 10, FIRST * DAY + 3600)
    return days


def write_days(
    monkeypatch: pytest.MonkeyPatch, days: list[list[Event]], *stores: Any
) -> list[Event]:
    """Each day's events into ``stores`` by writers whose clock says 22:00 that day."""
    for k, events in enumerate(days):
        at(monkeypatch, (FIRST + k) * DAY + 22 * 3600)
        for store in stores:
            writer = store.open_writer()
            for start in range(0, len(events), 40):
                writer.ingest(events[start : start + 40])
    at(monkeypatch, NOW)
    return [e for events in days for e in events]


@pytest.fixture
def sqlite(tmp_path: Path, migrated: Path) -> Iterator[Store]:
    store = Store(copy_of(migrated, tmp_path / "s.db"))
    yield store
    store.close()


# -- a task's day ------------------------------------------------------------------


def test_an_event_days_later_updates_the_task_in_its_own_day(
    pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = task_event("sent", "slow", FIRST * DAY + 600, name="proj.slow", eid="e1")
    done = task_event("succeeded", "slow", (FIRST + 3) * DAY + 60, result=1, eid="e2")
    at(monkeypatch, FIRST * DAY + 700)
    pg.open_writer().ingest([sent])
    at(monkeypatch, (FIRST + 3) * DAY + 120)
    writer = pg.open_writer()
    writer.ingest([done])
    writer.ingest([task_event("sent", "fresh", (FIRST + 3) * DAY + 130, name="proj.x")])
    with pg.connection() as conn:
        placed = "SELECT id, day, tableoid::regclass::text, state FROM tasks ORDER BY id"
        assert rows(conn, placed) == [
            ("fresh", FIRST + 3, pg_days.partition_name(FIRST + 3, "tasks"), "PENDING"),
            ("slow", FIRST, pg_days.partition_name(FIRST, "tasks"), "SUCCESS"),
        ]  # fmt: skip
        assert rows(conn, "SELECT count(*) FROM task_tally WHERE day = %s", FIRST) == [(1,)]
        written = rows(
            conn,
            "SELECT h.tableoid::regclass::text FROM history AS h JOIN tasks AS t"
            " ON t.rowid = h.task_rowid WHERE t.id = 'slow' ORDER BY h.written_at",
        )
        assert written == [
            (pg_days.partition_name(FIRST),),
            (pg_days.partition_name(FIRST + 3),),
        ]
        assert rows(conn, "SELECT day, kept_from FROM tasks_day") == [(FIRST + 3, 0)]
    task = pg.get_task("slow")
    assert task is not None and task["state"] == "SUCCESS"
    assert [e["kind"] for e in pg.task_events("slow")] == ["sent", "succeeded"]
    assert pg.counts() == {"tasks": 2}


# -- writers at once -----------------------------------------------------------------


def _lifecycle_batches(seed: int, ids: list[str], start: float) -> list[list[Event]]:
    events = [e for n, task_id in enumerate(ids)
              for e in lifecycle(task_id, "proj.race", start + n * 0.01)]  # fmt: skip
    random.Random(seed).shuffle(events)
    return [events[i : i + 30] for i in range(0, len(events), 30)]


def _write_all(store: PgStore, batches: list[list[Event]]) -> int:
    """Write ``batches`` as a consumer would (a transient failure: the batch again);
    how many were written again."""
    writer = store.open_writer()
    again = 0
    for batch in batches:
        while True:
            try:
                writer.ingest(batch)
                break
            except psycopg.Error as exc:
                if not writer.is_transient(exc):
                    raise
                again += 1
    return again


def assert_each_task_once(conn: Any, ids: list[str]) -> None:
    assert rows(conn, "SELECT id, count(*) FROM tasks GROUP BY id HAVING count(*) > 1") == []
    assert rows(
        conn, "SELECT task_rowid, count(*) FROM task_tally GROUP BY task_rowid HAVING count(*) > 1"
    ) == []  # fmt: skip
    assert sorted(task_id for (task_id,) in rows(conn, "SELECT id FROM tasks")) == sorted(ids)
    assert rows(conn, "SELECT DISTINCT state FROM tasks") == [("SUCCESS",)]


def test_threads_writing_the_same_new_tasks_around_midnight_store_each_once(
    pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight writers, half of whose clocks say a second before midnight and half a
    second after, write the lifecycles of the same new tasks in their own orders; three
    midnights over. Each task is stored once, in one day, and counted once."""
    clocks = threading.local()
    monkeypatch.setattr(pg_writer.time, "time", lambda: getattr(clocks, "now", NOW))
    failures: list[BaseException] = []
    all_ids: list[str] = []
    for night in range(3):
        midnight = (TODAY + 1 + night) * DAY
        ids = [f"race-{night}-{n}" for n in range(150)]
        all_ids += ids
        start = threading.Barrier(8)

        def run(
            n: int, ids: list[str] = ids, midnight: float = midnight, start: Any = start
        ) -> None:
            clocks.now = midnight + (1 if n % 2 else -1)
            try:
                batches = _lifecycle_batches(n, ids, midnight - 5)
                start.wait()
                _write_all(pg, batches)
            except BaseException as exc:  # the test reads it
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
    with pg.connection() as conn:
        assert_each_task_once(conn, all_ids)
        days = {day for (day,) in rows(conn, "SELECT DISTINCT day FROM tasks")}
        assert days <= {TODAY + n for n in range(5)}
    assert pg.counts() == {"tasks": len(all_ids)}
    assert pg.tasks_by_state()["proj.race"] == {"SUCCESS": len(all_ids)}


def _process(url: str, n: int, ids: list[str], midnight: float) -> None:
    """One of the processes of the next test: its own store, its own clock."""
    pg_writer.time = types.SimpleNamespace(time=lambda: midnight + (1 if n % 2 else -1))  # type: ignore[assignment]
    store = PgStore(url)
    try:
        _write_all(store, _lifecycle_batches(n, ids, midnight - 5))
    finally:
        store.close()


def test_processes_writing_the_same_new_tasks_around_midnight_store_each_once(
    pg: PgStore,
) -> None:
    context = multiprocessing.get_context("spawn")
    all_ids: list[str] = []
    for night in range(2):
        midnight = (TODAY + 1 + night) * DAY
        ids = [f"proc-{night}-{n}" for n in range(200)]
        all_ids += ids
        processes = [
            context.Process(target=_process, args=(pg.url, n, ids, midnight)) for n in range(4)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(180)
        assert [process.exitcode for process in processes] == [0] * 4
    with pg.connection() as conn:
        assert_each_task_once(conn, all_ids)
    assert pg.counts() == {"tasks": len(all_ids)}


# -- retention by age ----------------------------------------------------------------


def test_retention_by_age_drops_whole_days_and_the_rest_reads_as_sqlites(
    sqlite: Store, pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept by an age that falls on the second day: the first day's partitions go whole,
    the backlog seen on it (written on the third) in slices; the tasks, their events,
    lists, flows, traces and counts then read as SQLite's after it forgot the tasks first
    seen before the second day, and the pages serve them."""
    everything = write_days(monkeypatch, three_days(), sqlite, pg)
    before = {task_id for (task_id,) in rows(pg.connection().__enter__(), "SELECT id FROM tasks")}
    lite = Retention(slice_size=20, max_age=NOW - (FIRST + 1) * DAY)
    post = PgRetention(slice_size=20, max_age=NOW - ((FIRST + 1) * DAY + 5 * 3600))
    while lite.step(sqlite.writer(), now=NOW):
        lite._next_run = 0.0
    with pg.connection() as conn:
        while post.step(conn, now=NOW):
            post._next_run = 0.0
        assert [day for day, _ in pg_days.days_of(conn, "tasks")] == [
            FIRST + 1,
            FIRST + 2,
            FIRST + 3,
        ]
        assert rows(conn, "SELECT kept_from FROM tasks_day") == [(FIRST + 1,)]
    kept, _ = sqlite.list_tasks(TaskFilters(), None, 10_000)
    assert 40 < len(kept) < len(before)
    for task_id in sorted(before):
        assert pg.get_task(task_id) == sqlite.get_task(task_id), task_id
        assert pg.task_events(task_id) == sqlite.task_events(task_id), task_id
        assert pg.children(task_id) == sqlite.children(task_id), task_id
        assert pg.flow_rows(task_id) == sqlite.flow_rows(task_id), task_id
    for filters in (TaskFilters(), TaskFilters(name="proj.add"), TaskFilters(states=("FAILURE",))):
        assert pg.list_tasks(filters, None, 500) == sqlite.list_tasks(filters, None, 500)
    assert pg.flow_rows(STEP[1]) is None and pg.flow_rows(CHORD_GROUP)
    traces = {e["trace_id"] for e in everything if e.get("trace_id")}
    for trace_id in sorted(traces):
        assert pg.trace_rows(trace_id) == sqlite.trace_rows(trace_id), trace_id
    assert pg.list_flows(FlowFilters(), None, 100) == sqlite.list_flows(FlowFilters(), None, 100)
    assert pg.list_traces(None, None, None, 100) == sqlite.list_traces(None, None, None, 100)
    assert pg.counts() == sqlite.counts()
    assert pg.tasks_by_state() == sqlite.tasks_by_state()
    for dim in ("all", "name"):
        assert pg.since_ever(dim) == sqlite.since_ever(dim)
    config = Settings(db=pg.url, consumer=False)
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        listed = client.get("/api/tasks", params={"limit": 500}).json()["tasks"]
        assert sorted(t["id"] for t in listed) == sorted(row["id"] for row in kept)
        assert client.get(f"/api/tasks/{FANOUT}").status_code == 200
        assert client.get(f"/tasks/{FANOUT}").status_code == 200
        assert client.get(f"/flows/{FANOUT}").status_code == 200
        assert client.get(f"/api/tasks/{STEP[1]}").status_code == 404
        assert client.get("/executions").status_code == 200


def test_a_day_busy_past_the_wait_is_dropped_at_a_later_step(
    pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping a day waits for the table's readers only so long: a step that cannot drop
    it goes on (no error for the consumer to back off from), a later one drops it."""
    write_days(monkeypatch, three_days(), pg)
    for module in (pg_days, pg_retention):
        monkeypatch.setattr(module, "DROP_WAIT", "200ms")
    post = PgRetention(slice_size=20, max_age=NOW - ((FIRST + 1) * DAY + 5 * 3600))
    with psycopg.connect(pg.url) as reader, pg.connection() as conn:
        reader.execute("SELECT count(*) FROM tasks")  # its transaction holds the table
        post.step(conn, now=NOW)
        assert next(day for day, _ in pg_days.days_of(conn, "tasks")) == FIRST
        assert next(day for day, _ in pg_days.days_of(conn, "history")) == FIRST
        reader.rollback()
        post._next_run = 0.0
        while post.step(conn, now=NOW):
            post._next_run = 0.0
        for table in pg_days.DAILY:
            assert next(day for day, _ in pg_days.days_of(conn, table)) == FIRST + 1, table


def test_retention_by_count_empties_days_then_drops_them(
    pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--max-tasks`` alone deletes slices (a count does not fall on a day's edge); the
    partitions of past days it emptied go at its next look, once a day."""
    write_days(monkeypatch, three_days(), pg)
    writer = pg.open_writer(Upkeep(max_tasks=25))  # the third day's own
    while writer.upkeep(caught_up=True)[1]:
        pass
    assert pg.counts() == {"tasks": 25}
    with pg.connection() as conn:
        assert rows(conn, "SELECT DISTINCT day FROM tasks") == [(FIRST + 2,)]
        assert [day for day, _ in pg_days.days_of(conn, "tasks")] == [FIRST + 2, FIRST + 3]
        assert [day for day, _ in pg_days.days_of(conn, "task_tally")] == [FIRST + 2, FIRST + 3]


# -- the migration -------------------------------------------------------------------


COPIED = (
    "history", "task_tally", "planned", "workers", "worker_gaps", "registry", "cursors",
    "skipped", "skipped_samples", "rollups", "rollup_hist", "task_counts", "task_names",
    "rollup_state", "error_groups", "error_hours", "flow_index", "trace_index",
)  # fmt: skip


def _columns(conn: Any, table: str) -> list[str]:
    return [
        str(name)
        for (name,) in rows(
            conn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
            " AND table_schema = current_schema() AND is_generated = 'NEVER'"
            " ORDER BY ordinal_position",
            table,
        )
    ]


def _copy_into_old(source: Any, target: Any) -> None:
    """What ``source`` (migrated) holds into ``target`` (migrated up to m005), in its
    columns: as the writers before m005 would have left it."""
    for day, _ in pg_days.days_of(source, "history"):
        pg_days.make_partitions(target, day, ("history",))
    for table in ("tasks", *COPIED):
        columns = _columns(target, table)
        names = ", ".join(f'"{column}"' for column in columns)
        found = rows(source, f"SELECT {names} FROM {table}")
        target.execute(f"DELETE FROM {table}")
        if found:
            target.cursor().executemany(
                f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE"
                f" VALUES ({', '.join(['%s'] * len(columns))})",
                found,
            )
    last = rows(source, "SELECT pg_sequence_last_value(pg_get_serial_sequence('tasks', 'rowid'))")
    target.execute("SELECT setval(pg_get_serial_sequence('tasks', 'rowid'), %s)", last[0])


TASK_ROWS = f"SELECT rowid, {', '.join(TASK_COLUMNS)}, day FROM tasks ORDER BY id"


def test_the_migration_moves_a_store_written_before_it_into_days(
    pg_server: str, pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store at the migration before m005 holding three days of tasks (with the rows
    a writer then left: the same as a store written since, less the days) is converted:
    each task in the day of its first history row (one whose history is gone: in the day
    of its last write), the same rows, histories and counts; an index made before it is
    made again; new batches go on with the next rowids, as in a store that never needed it."""
    days = three_days()
    write_days(monkeypatch, days, pg)
    names = [name for name, _ in schema.MIGRATIONS]
    name = create_database(pg_server)
    try:
        url = pg_url_of(name)
        with monkeypatch.context() as before:
            before.setattr(
                schema, "MIGRATIONS", schema.MIGRATIONS[: names.index("m005_tasks_by_day")]
            )
            PgStore(url).close()
        with psycopg.connect(url, autocommit=True) as old, pg.connection() as new:
            with old.transaction():
                _copy_into_old(new, old)
            old.execute("CREATE INDEX tasks_by_exc ON tasks (exc_type)")
            no_history = rows(
                new, "SELECT t.rowid, t.id FROM tasks AS t WHERE t.day = %s AND t.updated_at >= %s"
                " ORDER BY t.id LIMIT 1", FIRST, (FIRST + 2) * DAY,
            )[0]  # fmt: skip
            old.execute("DELETE FROM history WHERE task_rowid = %s", (no_history[0],))
        converted = PgStore(url)
        try:
            assert converted.applied == [
                "m005_tasks_by_day",
                "m006_planned_collation",
                "m007_packed_histograms",
            ]
            with converted.connection() as conn, pg.connection() as new:
                expected = rows(new, TASK_ROWS)
                moved = [(*row[:-1], FIRST + 2) if row[1] == no_history[1] else row
                         for row in expected]  # fmt: skip
                assert rows(conn, TASK_ROWS) == moved
                history = "SELECT task_rowid, written_at, events FROM history ORDER BY 1, 2, 3"
                assert rows(conn, history) == [
                    row for row in rows(new, history) if row[0] != no_history[0]
                ]
                tally = "SELECT * FROM task_tally ORDER BY task_rowid"
                assert rows(conn, tally) == [
                    (*row[:-1], FIRST + 2) if row[0] == no_history[0] else row
                    for row in rows(new, tally)
                ]
                assert [d for d, _ in pg_days.days_of(conn, "tasks")] == [
                    FIRST,
                    FIRST + 1,
                    FIRST + 2,
                ]
                remade = "SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_by_exc'"
                assert rows(conn, remade) == [
                    ("CREATE INDEX tasks_by_exc ON ONLY public.tasks USING btree (exc_type)",)
                ]
                statistics = {
                    name for (name,) in rows(conn, "SELECT stxname FROM pg_statistic_ext")
                }
                for table in ["tasks", *(name for _, name in pg_days.days_of(conn, "tasks"))]:
                    assert f"{table}_text_name" in statistics, table  # m004's, on each day too
                gone = (
                    "SELECT to_regclass('tasks_before_m005'), to_regclass('task_tally_before_m005')"
                )
                assert rows(conn, gone) == [(None, None)]
            assert converted.counts() == pg.counts()
            assert converted.tasks_by_state() == pg.tasks_by_state()
            assert converted.since_ever("name") == pg.since_ever("name")
            more = [
                task_event("sent", "after", NOW - 60, name="proj.after"),
                task_event("started", FANOUT, NOW - 30, host=W1),
                *lifecycle("after-2", "proj.after", NOW - 20),
            ]
            for store in (pg, converted):
                store.open_writer().ingest(more)
            with converted.connection() as conn, pg.connection() as new:
                expected = rows(new, TASK_ROWS)
                moved = [(*row[:-1], FIRST + 2) if row[1] == no_history[1] else row
                         for row in expected]  # fmt: skip
                assert rows(conn, TASK_ROWS) == moved
                assert rows(conn, "SELECT day FROM tasks WHERE id = %s", FANOUT) == [(FIRST + 1,)]
        finally:
            converted.close()
    finally:
        drop_database(pg_server, name)
