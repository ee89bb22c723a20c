"""PostgreSQL's rollups against SQLite's: the same events give the same numbers.

The factories' scenarios and random lifecycles go into a SQLite file and a
PostgreSQL database, in order, shuffled and re-delivered; then the rollup
tables hold the same rows, and every read of them (series, totals per key,
counters since ever, tasks by state, the task count, the registry, the error
groups) answers the same in both. Each test has its own database.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.core import buckets
from stemtrace.core.events import Event
from stemtrace.store import Store, Upkeep
from stemtrace.store.pg import PgStore
from stemtrace.store.pg import writer as pg_writer
from stemtrace.store.pg.days import DAY, days_of
from stemtrace.store.pg.retention import PgRetention
from stemtrace.store.pg.schema import migrate
from stemtrace.store.retention import Retention
from tests.factories import W1, W2, chain_events, chord_events, lifecycle
from tests.pg import NOW, TABLES, ingest_both, workload
from tests.site import copy_of

pytestmark = pytest.mark.usefixtures("fixed_clock")

ROLLUP_TABLES = (
    "rollups, rollup_hist, task_counts, task_names, task_tally, error_groups, error_hours,"
    " flow_index, trace_index"
)
QUERIES = {
    "rollups": "SELECT * FROM rollups",
    "rollup_hist": "SELECT dim, key, metric, res, t, counts FROM rollup_hist",
    "task_counts": "SELECT name, state, n FROM task_counts",
    "task_names": "SELECT name, last_seen, retried FROM task_names",
    "task_tally": "SELECT t.id, c.tally, c.state, c.retries, c.flow, c.trace"
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid",
    "error_groups": "SELECT * FROM error_groups",
    "error_hours": "SELECT * FROM error_hours",
    "flow_index": "SELECT * FROM flow_index",
    "trace_index": "SELECT * FROM trace_index",
}
DIMS = ("all", "name", "queue", "worker")
T0 = NOW - 4 * 3600
NAMES = ("proj.add", "proj.mul", "<script>alert(1)</script>")


def lifecycles(seed: int, tasks: int, at: float = T0, hours: float = 3) -> list[Event]:
    """Random tasks in every outcome over ``hours`` from ``at`` (as tests/test_rollups.py's)."""
    chance = random.Random(seed)
    found: list[Event] = []
    for n in range(tasks):
        found += lifecycle(
            f"t-{seed}-{n}",
            chance.choice(NAMES),
            at + chance.uniform(0, hours * 3600),
            chance.choice(("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "PENDING")),
            worker=chance.choice((W1, W2)),
            runtime=chance.choice((0.004, 0.3, 2.5, 40.0)),
            queue=chance.choice(("celery", "mail")),
            exc=("proj.Boom", chance.choice(("disk full", "timed out", "refused"))),
        )
    return found


def _same(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as both backends read it: a histogram's counts as a tuple (SQLite packs them,
    PostgreSQL keeps a ``bigint[]``)."""
    if table == "rollup_hist":
        return (*row[:5], tuple(buckets.unpack(row[5])))
    return row


def tables(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: sorted(_same(name, tuple(row)) for row in conn.execute(query).fetchall())
        for name, query in QUERIES.items()
    }


def sqlite_tables(sqlite: Store) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(sqlite.path)
    try:
        return tables(conn)
    finally:
        conn.close()


def reads(store: Store | PgStore, times: tuple[float, float]) -> dict[str, Any]:
    """Every rollup read over the ranges around ``times`` (first and last event)."""
    first, last = times
    found: dict[str, Any] = {
        "tasks_by_state": store.tasks_by_state(),
        "counts": store.counts(),
        "registry": [_sorted_workers(entry) for entry in store.registry()],
    }
    ranges = [
        (first - 600, last + 600),  # to the minute, whole hours inside
        (first + 37, first + 1234),  # within an hour
        (first - 8 * 3600, last + 3600),  # over six hours: by whole hours
    ]
    for dim in DIMS:
        ever = store.since_ever(dim)
        found[f"since_ever {dim}"] = ever
        for since, until in ranges:
            found[f"stats_by {dim} {since}"] = store.stats_by(dim, since, until)
            found[f"stats_by {dim} {since} run"] = store.stats_by(dim, since, until, ("run",))
            for key in [*ever, "no.such.key"]:
                for step in (60, 600, 3600):
                    found[f"stats {dim} {key} {since} {step}"] = store.stats(
                        since, until, step, dim, key
                    )
    for since, until in [*ranges, (last + 7200, last + 9000)]:
        found[f"errors {since}"] = store.error_groups(None, since, until)
        found[f"errors {since} 1"] = store.error_groups(None, since, until, limit=1)
        for name in NAMES:
            found[f"errors {since} {name}"] = store.error_groups(name, since, until)
    return found


def _sorted_workers(entry: dict[str, Any]) -> dict[str, Any]:
    """The registry's workers: both backends hold the same set, not in one order."""
    return {**entry, "workers": sorted(entry["workers"])}


def span(events: list[Event]) -> tuple[float, float]:
    times = [e["ts"] for e in events]
    return min(times), max(times)


def assert_same(sqlite: Store, pg: PgStore, events: list[Event]) -> dict[str, Any]:
    expected = sqlite_tables(sqlite)
    with pg.connection() as conn:
        found = tables(conn)
    assert expected["rollups"] and expected["error_groups"]
    for name, rows in expected.items():
        assert found[name] == rows, name
    lite = reads(sqlite, span(events))
    post = reads(pg, span(events))
    assert post.keys() == lite.keys()
    for name, answer in lite.items():
        assert post[name] == answer, name
    return lite


@pytest.fixture
def sqlite(tmp_path: Path, migrated: Path) -> Iterator[Store]:
    store = Store(copy_of(migrated, tmp_path / "s.db"))
    yield store
    store.close()


def test_the_factories_scenarios_read_the_same(sqlite: Store, pg: PgStore) -> None:
    events = workload()
    ingest_both(sqlite, pg, events, batch=40)
    answers = assert_same(sqlite, pg, events)
    assert sqlite_tables(sqlite)["flow_index"] and sqlite_tables(sqlite)["trace_index"]
    assert answers["counts"]["tasks"] > 15
    assert any(
        point["failed"] and any(point["run"])
        for read, points in answers.items()
        if read.startswith("stats all ")
        for point in points
    )
    assert answers[f"errors {span(events)[0] - 600}"]
    assert any(entry["counts"]["total"] for entry in answers["registry"])


def test_random_lifecycles_read_the_same(sqlite: Store, pg: PgStore) -> None:
    events = lifecycles(1, 150)
    ingest_both(sqlite, pg, events, batch=50, skips=False)
    answers = assert_same(sqlite, pg, events)
    assert len(answers[f"errors {span(events)[0] - 600}"]) == 9  # three names, three messages


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 60), copies=st.integers(1, 2))
def test_shuffled_and_redelivered_read_the_same(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, pg: PgStore,
    seed: int, batch: int, copies: int,
) -> None:  # fmt: skip
    with pg.connection() as conn:
        conn.execute(f"TRUNCATE {TABLES}, {ROLLUP_TABLES} RESTART IDENTITY")
    events = (workload() + lifecycles(seed, 30)) * copies
    random.Random(seed).shuffle(events)
    sqlite = Store(copy_of(migrated, tmp_path_factory.mktemp("s") / "s.db"))
    try:
        ingest_both(sqlite, pg, events, batch, skips=False)
        assert_same(sqlite, pg, events)
    finally:
        sqlite.close()


def test_the_migration_counts_the_tasks_stored_before_it(sqlite: Store, pg: PgStore) -> None:
    events = workload() + lifecycles(2, 60)
    ingest_both(sqlite, pg, events, batch=100, skips=False)
    with pg.connection() as conn:
        conn.execute(f"DROP TABLE {ROLLUP_TABLES}, rollup_state")
        conn.execute("DELETE FROM stemtrace_migrations WHERE name = 'm002_rollups'")
        assert migrate(conn) == ["m002_rollups"]
    assert_same(sqlite, pg, events)


def test_two_writers_at_once_count_every_task_once(sqlite: Store, pg: PgStore) -> None:
    """Writers counting into the same periods lock them in one order: no deadlock, and
    every task counted once. (What a task counts under, its queue and worker, is what
    was known when it was counted, and so is a task's wait: those depend on the order events
    came in, which two writers change; the rest compares with one writer's.)"""
    events = lifecycles(3, 300)
    random.Random(3).shuffle(events)
    failures: list[BaseException] = []

    def run(part: list[Event]) -> None:
        writer = pg.open_writer()
        try:
            for start in range(0, len(part), 25):
                writer.ingest(part[start : start + 25])
        except BaseException as exc:  # the test reads it
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(events[n::2],)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    writer = sqlite.open_writer()
    for start in range(0, len(events), 25):
        writer.ingest(events[start : start + 25])
    for dim in ("all", "name"):
        expected = {key: {**ever, "wait": None} for key, ever in sqlite.since_ever(dim).items()}
        found = {key: {**ever, "wait": None} for key, ever in pg.since_ever(dim).items()}
        assert found == expected, dim
    assert pg.tasks_by_state() == sqlite.tasks_by_state()
    assert pg.counts() == sqlite.counts() == {"tasks": 300}
    assert pg.registry() == sqlite.registry()
    first, last = span(events)
    assert pg.error_groups(None, first, last + 1) == sqlite.error_groups(None, first, last + 1)


def test_retention_forgets_the_same(sqlite: Store, pg: PgStore) -> None:
    """Tasks forgotten by count leave the per-name numbers, the flow and trace indexes
    as SQLite's retention leaves them. (By age, PostgreSQL forgets whole days:
    :func:`test_retention_by_age_drops_whole_days_as_sqlite_forgets_them`.)"""
    events = workload() + lifecycles(4, 80)
    ingest_both(sqlite, pg, events, batch=100, skips=False)
    before = sqlite.counts()["tasks"]
    keep = {"max_tasks": 40}
    lite, post = Retention(slice_size=25, **keep), PgRetention(slice_size=25, **keep)
    while lite.step(sqlite.writer(), now=NOW):
        lite._next_run = 0.0
    with pg.connection() as conn:
        while post.step(conn, now=NOW):
            post._next_run = 0.0
    assert 10 < sqlite.counts()["tasks"] < before
    stored = assert_same(sqlite, pg, events)
    assert stored["counts"] == sqlite.counts()


def test_retention_by_age_drops_whole_days_as_sqlite_forgets_them(
    sqlite: Store, pg: PgStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three days written on their days (a chain on the first, a chord on the second),
    with a backlog of the first day's tasks written on the third and late events of
    first-day tasks written on the third. Retention by an age that falls on the second
    day drops the first day's partitions whole, and deletes the backlog in slices (first
    seen before the first day kept): the rollups, indexes and reads are those of SQLite's
    retention at the start of the second day, and so are the tasks and histories kept."""
    first = int(NOW // DAY) - 3
    days = [lifecycles(10 + k, 30, at=(first + k) * DAY + 3600, hours=18) for k in range(3)]
    days[0] += chain_events((first * DAY) + 7200, "FAILURE")
    days[1] += chord_events((first + 1) * DAY + 7200)
    late = [e for e in days[0] if e["kind"] in ("succeeded", "failed")][:8]
    days[0] = [e for e in days[0] if e not in late]
    backlog = lifecycles(20, 15, at=first * DAY + 3600, hours=18)
    days[2] += late + backlog
    for k, events in enumerate(days):
        monkeypatch.setattr(pg_writer.time, "time", lambda k=k: (first + k) * DAY + 22 * 3600)
        ingest_both(sqlite, pg, events, batch=40, skips=False)
    monkeypatch.setattr(pg_writer.time, "time", lambda: NOW)
    everything = [e for events in days for e in events]
    with pg.connection() as conn:
        written = dict(_rows(conn, "SELECT day, count(*) FROM tasks GROUP BY day"))
        assert _rows(conn, "SELECT count(*) FROM planned") == [(4,)]  # 3 links, 1 callback
    seen: set[str] = set()
    for k, events in enumerate(days):
        new = {e["task_id"] for e in events} - seen
        assert written[first + k] == len(new), k
        seen |= new
    lite = Retention(slice_size=25, max_age=NOW - (first + 1) * DAY)
    post = PgRetention(slice_size=25, max_age=NOW - ((first + 1) * DAY + 3600))
    while lite.step(sqlite.writer(), now=NOW):
        lite._next_run = 0.0
    with pg.connection() as conn:
        while post.step(conn, now=NOW):
            post._next_run = 0.0
        for table in ("tasks", "task_tally", "history"):  # and the next day, made ahead
            assert [day for day, _ in days_of(conn, table)] == [first + 1, first + 2, first + 3]
        kept = _rows(conn, "SELECT id FROM tasks ORDER BY id")
        for table in ("history", "planned"):
            assert _rows(conn, f"SELECT count(*) FROM {table} WHERE task_rowid NOT IN"
                         " (SELECT rowid FROM tasks)") == [(0,)], table  # fmt: skip
        assert _rows(conn, "SELECT count(*) FROM planned") == [(1,)]  # the chord's callback
    assert sqlite.counts()["tasks"] == len(kept) == written[first + 1] + 30
    lite_conn = sqlite3.connect(sqlite.path)
    try:
        assert _rows(lite_conn, "SELECT id FROM tasks ORDER BY id") == kept
    finally:
        lite_conn.close()
    assert_same(sqlite, pg, everything)


def _rows(conn: Any, query: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(query).fetchall()]


def test_folding_minutes_into_hours_reads_the_same(sqlite: Store, pg: PgStore) -> None:
    events = workload() + lifecycles(5, 80)
    ingest_both(sqlite, pg, events, batch=100, skips=False)
    for store in (sqlite, pg):
        store.open_writer(Upkeep(minutes_for=3600)).fold(now=NOW)  # type: ignore[attr-defined]
    with pg.connection() as conn:
        folded = conn.execute("SELECT folded_before FROM rollup_state").fetchone()[0]
        assert folded == (NOW - 3600) // 3600 * 3600
        assert conn.execute("SELECT COUNT(*) FROM rollups WHERE res = 60").fetchone()[0]
    assert_same(sqlite, pg, events)


def test_m007_packs_a_store_with_a_row_per_bucket(pg_url: str, pg: PgStore) -> None:
    """A database whose m002 made ``rollup_hist`` a row per bucket reads the same once m007
    packed it, and its writer goes on adding into the packed cells."""
    events = lifecycles(5, 120)
    pg.open_writer().ingest(events)
    before = reads(pg, span(events))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cells = conn.execute("SELECT dim, key, metric, res, t, counts FROM rollup_hist").fetchall()
        conn.execute("DROP TABLE rollup_hist")
        conn.execute(
            'CREATE TABLE rollup_hist (dim text COLLATE "C" NOT NULL,'
            ' key text COLLATE "C" NOT NULL, metric text NOT NULL, res integer NOT NULL,'
            " t bigint NOT NULL, bucket integer NOT NULL, n bigint NOT NULL,"
            " PRIMARY KEY (dim, key, res, t, metric, bucket))"
        )
        conn.execute(
            "CREATE INDEX rollup_hist_by_time ON rollup_hist (dim, res, t)"
            " INCLUDE (key, metric, bucket, n)"
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO rollup_hist VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(*cell, b, n) for *cell, counts in cells for b, n in enumerate(counts) if n],
            )
        conn.execute("DELETE FROM stemtrace_migrations WHERE name = 'm007_packed_histograms'")
    pg.close()
    packed = PgStore(pg_url)
    try:
        assert packed.applied == ["m007_packed_histograms"]
        with packed.connection() as conn:
            columns = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'rollup_hist' ORDER BY ordinal_position"
            ).fetchall()
            assert [c for (c,) in columns] == ["dim", "key", "metric", "res", "t", "counts"]
            assert sorted(map(tuple, conn.execute(
                "SELECT dim, key, metric, res, t, counts FROM rollup_hist").fetchall())
            ) == sorted(map(tuple, cells))  # fmt: skip
        assert reads(packed, span(events)) == before
        more = lifecycles(6, 40)
        packed.open_writer().ingest(more)
        assert packed.since_ever("name") != before["since_ever name"]
    finally:
        packed.close()
