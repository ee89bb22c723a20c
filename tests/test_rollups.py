"""Rollups kept at ingest agree with what the tasks table says, whatever order events come in."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from stemtrace.core import buckets, errors, states
from stemtrace.core.events import Event
from stemtrace.store import Store, Upkeep, digests, tally
from stemtrace.store import rollups as rollup_tables
from stemtrace.store.ingest import TASK_COLUMNS, Ingestor
from stemtrace.store.migrations import migrations
from stemtrace.store.retention import Retention
from tests.factories import W1, W2, lifecycle, task_event

OUTCOMES = ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "PENDING")
NAMES = ("proj.add", "proj.mul", "<script>alert(1)</script>")
COLUMN_AT = {name: i for i, name in enumerate(TASK_COLUMNS)}
T0 = 1_760_000_000.0


def workload(seed: int, tasks: int) -> list[Event]:
    chance = random.Random(seed)
    found: list[Event] = []
    for n in range(tasks):
        found += lifecycle(
            f"t-{seed}-{n}",
            chance.choice(NAMES),
            T0 + chance.uniform(0, 3 * 3600),
            chance.choice(OUTCOMES),
            worker=chance.choice((W1, W2)),
            runtime=chance.choice((0.004, 0.3, 2.5, 40.0)),
            queue=chance.choice(("celery", "mail")),
        )
    return found


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "r.db")
    yield opened
    opened.close()


def ingest(store: Store, events: list[Event], batch: int = 50) -> None:
    writer = store.open_writer()
    for start in range(0, len(events), batch):
        writer.ingest(events[start : start + batch])


def conn(store: Store) -> sqlite3.Connection:
    return store.reader().conn


def totals(store: Store, dim: str = "all", res: str = "res = 3600") -> dict[str, dict[str, int]]:
    """Outcome totals per key of ``dim`` from the rollups (minutes and hours; 0: since ever)."""
    found: dict[str, dict[str, int]] = {}
    rows = conn(store).execute(
        f"SELECT key, {', '.join(f'SUM({c})' for c in rollup_tables.OUTCOMES)}"
        f" FROM rollups WHERE dim = ? AND {res} GROUP BY key",
        (dim,),
    )
    for key, *values in rows:
        found[key] = dict(zip(rollup_tables.OUTCOMES, values, strict=True))
    return found


def truth(store: Store, column: str | None = None) -> dict[str, dict[str, int]]:
    """The same totals counted from the tasks table."""
    key = "''" if column is None else column
    rows = conn(store).execute(
        f"""SELECT {key}, SUM(sent_at IS NOT NULL), SUM(started_at IS NOT NULL),
                SUM(state = 'SUCCESS'), SUM(state = 'FAILURE'), SUM(retries),
                SUM(state IN ('REVOKED', 'REJECTED'))
            FROM tasks WHERE name IS NOT NULL GROUP BY 1"""
    )
    return {
        k: dict(zip(rollup_tables.OUTCOMES, values, strict=True))
        for k, *values in rows
        if any(values)
    }


def nonzero(found: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {k: v for k, v in found.items() if any(v.values())}


def hist(store: Store, metric: str, dim: str = "all", res: str = "res = 3600") -> Counter[int]:
    rows = conn(store).execute(
        f"SELECT counts FROM rollup_hist WHERE metric = ? AND dim = ? AND {res}", (metric, dim)
    )
    found: Counter[int] = Counter()
    for (counts,) in rows:
        found.update({bucket: n for bucket, n in enumerate(buckets.unpack(counts)) if n})
    return found


def task_counts(store: Store) -> set[tuple[str, str, int]]:
    return set(conn(store).execute("SELECT name, state, n FROM task_counts"))


def task_counts_truth(store: Store) -> set[tuple[str, str, int]]:
    return set(
        conn(store).execute(
            "SELECT name, state, COUNT(*) FROM tasks WHERE name IS NOT NULL GROUP BY 1, 2"
        )
    )


def check_agrees(store: Store) -> None:
    assert nonzero(totals(store)) == truth(store)
    assert nonzero(totals(store, "name")) == truth(store, "name")
    assert nonzero(totals(store, "name", "res = 0")) == truth(store, "name")  # nothing pruned
    assert task_counts(store) == task_counts_truth(store)
    retried = set(conn(store).execute("SELECT name, retried FROM task_names WHERE retried > 0"))
    assert retried == set(
        conn(store).execute(
            "SELECT name, COUNT(*) FROM tasks WHERE retries > 0 AND name IS NOT NULL GROUP BY 1"
        )
    )
    runs = conn(store).execute(
        "SELECT runtime FROM tasks WHERE state IN ('SUCCESS', 'FAILURE') AND runtime IS NOT NULL"
    )
    assert hist(store, "run") == Counter(buckets.index(r) for (r,) in runs)
    all_time = conn(store).execute(
        "SELECT key, counts FROM rollup_hist WHERE res = 0 AND dim = 'name' AND metric = 'run'"
    )
    assert Counter(
        {
            (name, b): n
            for name, counts in all_time
            for b, n in enumerate(buckets.unpack(counts))
            if n
        }
    ) == Counter(
        (name, buckets.index(r))
        for name, r in conn(store).execute(
            "SELECT name, runtime FROM tasks WHERE state IN ('SUCCESS', 'FAILURE')"
            " AND runtime IS NOT NULL"
        )
    )


def check_digests(store: Store, errors_too: bool = True) -> None:
    every = [
        dict(zip(("id", "root_id", "group_id", "trace_id", "state", "exc_type", "exc_message",
                  "name"), r, strict=True))
        for r in conn(store).execute(
            "SELECT id, root_id, group_id, trace_id, state, exc_type, exc_message, name FROM tasks"
        )
    ]  # fmt: skip
    rows = [row for row in every if row["name"] is not None]

    def index_of(key_of: Any) -> dict[str, tuple[int, int, int]]:
        found: dict[str, list[int]] = {}
        for row in rows:
            key = key_of(row)
            if key is None:
                continue
            entry = found.setdefault(key, [0, 0, 0])
            entry[0] += 1
            entry[1] += row["state"] in states.BROKEN
            entry[2] += row["state"] not in states.TERMINAL
        return {k: (a, b, c) for k, (a, b, c) in found.items()}

    # A task is in the index of its flow and trace unless it is the one they are named after.
    by_id = {row["id"]: row for row in every}

    def flow_of(row: dict[str, Any]) -> str | None:
        key = digests.flow_key(row, by_id.get(row["root_id"]))
        return key if key != row["id"] else None

    assert index_of(flow_of) == {
        k: (a, b, c)
        for k, a, b, c in conn(store).execute(
            "SELECT key, tasks, failures, running FROM flow_index WHERE tasks > 0"
        )
    }
    assert index_of(lambda r: r["trace_id"] if r["trace_id"] != r["id"] else None) == {
        k: (a, b, c)
        for k, a, b, c in conn(store).execute(
            "SELECT trace_id, tasks, failures, running FROM trace_index WHERE tasks > 0"
        )
    }
    if not errors_too:  # retention keeps error counts by the hour, tasks by count
        return
    failures = Counter(
        (r["name"], errors.fingerprint(r["exc_type"], r["exc_message"] or ""))
        for r in rows
        if r["state"] == states.FAILURE
    )
    assert failures == Counter(
        {
            (name, fp): n
            for name, fp, n in conn(store).execute(
                "SELECT name, fingerprint, SUM(n) FROM error_hours GROUP BY 1, 2"
            )
        }
    )


def test_in_order_the_minutes_and_histograms_equal_the_tasks_table(store: Store) -> None:
    ingest(store, workload(1, 300))
    check_agrees(store)
    check_digests(store)
    # the hour rows hold what the minute rows hold (reads of long ranges use them)
    for dim in ("all", "name", "queue", "worker"):
        assert totals(store, dim, "res = 60") == totals(store, dim, "res = 3600")
        assert hist(store, "run", dim, "res = 60") == hist(store, "run", dim, "res = 3600")
    for column, outcome in (("sent_at", "sent"), ("started_at", "started")):
        by_minute = dict(
            conn(store).execute(
                f"SELECT t, SUM({outcome}) FROM rollups WHERE dim = 'all' AND res = 60 GROUP BY t"
            )
        )
        expected = dict(
            conn(store).execute(
                f"SELECT CAST({column} / 60 AS INTEGER) * 60, COUNT(*) FROM tasks"
                f" WHERE {column} IS NOT NULL GROUP BY 1"
            )
        )
        assert {t: n for t, n in by_minute.items() if n} == expected
    waits = conn(store).execute(
        "SELECT started_at - sent_at FROM tasks"
        " WHERE sent_at IS NOT NULL AND started_at IS NOT NULL"
    )
    assert hist(store, "wait") == Counter(buckets.index(w) for (w,) in waits)
    assert hist(store, "wait", "queue") == hist(store, "wait")  # every task here has a queue


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 40), copies=st.integers(1, 2))
def test_redelivered_and_reordered_events_count_once(
    tmp_path_factory: pytest.TempPathFactory, seed: int, batch: int, copies: int
) -> None:
    events = workload(seed, 40) * copies
    random.Random(seed).shuffle(events)
    store = Store(tmp_path_factory.mktemp("r") / "r.db")
    try:
        ingest(store, events, batch)
        check_agrees(store)
        check_digests(store)
    finally:
        store.close()


def test_a_late_sent_still_gives_the_wait(store: Store) -> None:
    events = lifecycle("late", "proj.add", T0, "SUCCESS")
    sent, rest = events[0], events[1:]
    ingest(store, rest)
    assert hist(store, "wait") == Counter()
    ingest(store, [sent])
    assert hist(store, "wait") == Counter({buckets.index(0.2): 1})
    check_agrees(store)


def test_retention_takes_forgotten_tasks_out_of_the_per_name_numbers(store: Store) -> None:
    ingest(store, workload(2, 200))
    since_ever = totals(store, "name", "res = 0"), hist(store, "run", "name", "res = 0")
    kept = 50
    retention = Retention(max_tasks=kept, slice_size=1000)
    writer = store.writer()
    while retention.step(writer, now=T0 + 4 * 3600):
        retention._next_run = 0.0
    assert conn(store).execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == kept
    assert task_counts(store) == task_counts_truth(store)
    check_digests(store, errors_too=False)
    # counters since the store began only grow (Prometheus reads them as counters)
    assert (totals(store, "name", "res = 0"), hist(store, "run", "name", "res = 0")) == since_ever
    oldest = conn(store).execute("SELECT MIN(seen_at) FROM tasks").fetchone()[0]
    assert (
        conn(store)
        .execute("SELECT COUNT(*) FROM rollups WHERE t + res <= ? AND res > 0", (oldest - 1,))
        .fetchone()[0]
        == 0
    )


def test_folding_minutes_into_hours_keeps_every_total(store: Store) -> None:
    ingest(store, workload(3, 200))
    before = (totals(store), totals(store, "name"), hist(store, "run"), hist(store, "wait"))
    writer = store.open_writer(Upkeep(minutes_for=0))
    writer.fold(now=T0 + 10 * 3600)
    minutes = conn(store).execute("SELECT COUNT(*) FROM rollups WHERE res = 60").fetchone()[0]
    assert minutes == 0
    after = (totals(store), totals(store, "name"), hist(store, "run"), hist(store, "wait"))
    assert after == before
    check_agrees(store)


def test_the_migration_builds_the_rollups_of_an_existing_store(store: Store) -> None:
    ingest(store, workload(4, 150))
    expected = (totals(store, "name"), task_counts(store), hist(store, "run", "name"))
    writer = store.writer()
    writer.executescript(
        """DELETE FROM rollups; DELETE FROM rollup_hist; DELETE FROM task_counts;
           DELETE FROM task_names;
           DELETE FROM task_tally;
           DELETE FROM flow_index; DELETE FROM trace_index; DELETE FROM error_groups;
           DELETE FROM error_hours;"""
    )
    seen: list[tuple[int, int]] = []
    tally.tally_all(writer, chunk=40, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (150, 150) and len(seen) == 4
    assert (totals(store, "name"), task_counts(store), hist(store, "run", "name")) == expected


def test_hostile_names_are_plain_keys(store: Store) -> None:
    ingest(store, lifecycle("x", "'); DROP TABLE tasks; --", T0, "FAILURE"))
    assert json.dumps(totals(store, "name"))  # stored as data
    assert task_counts(store) == {("'); DROP TABLE tasks; --", "FAILURE", 1)}


def test_opening_a_store_from_before_the_rollups_builds_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    migrations.apply(Database(old), stop_before="m011_rollups")
    with mock.patch.object(tally, "tally"):  # the ingestor of then kept none
        Ingestor(old).ingest(workload(5, 120))
    old.close()
    store = Store(path)
    try:
        assert "upgrading" in caplog.text and "m011_rollups" in caplog.text
        check_agrees(store)
        assert totals(store)[""]["sent"] == 120
    finally:
        store.close()


OLD_HIST = """
    CREATE TABLE rollup_hist (
        dim TEXT NOT NULL, key TEXT NOT NULL, metric TEXT NOT NULL, res INTEGER NOT NULL,
        t INTEGER NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (dim, key, res, t, metric, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX rollup_hist_by_time ON rollup_hist (dim, res, t, key, metric, bucket, n);
"""
"""``rollup_hist`` as m011 made it before m013: a row per bucket."""


def test_opening_a_store_with_a_row_per_bucket_packs_its_histograms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buckets.db"
    store = Store(path)
    events = workload(8, 200)
    ingest(store, events)
    since, until = T0 - 3600, T0 + 5 * 3600
    reads = lambda s: (  # noqa: E731
        [s.stats(since, until, step, dim, key) for step in (60, 600, 3600)
         for dim, key in (("all", ""), ("name", "proj.add"), ("queue", "mail"))],
        s.stats_by("name", since, until), s.stats_by("worker", since, until),
        s.since_ever("name"), s.registry(),
    )  # fmt: skip
    before = reads(store)
    cells = conn(store).execute("SELECT dim, key, metric, res, t, counts FROM rollup_hist")
    by_bucket = [
        (*cell, bucket, n)
        for *cell, counts in cells
        for bucket, n in enumerate(buckets.unpack(counts))
        if n
    ]
    store.close()
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(f"DROP TABLE rollup_hist; {OLD_HIST}")
    old.executemany("INSERT INTO rollup_hist VALUES (?, ?, ?, ?, ?, ?, ?)", by_bucket)
    old.execute("DELETE FROM _sqlite_migrations WHERE name = 'm013_packed_histograms'")
    old.close()
    store = Store(path)
    try:
        assert "m013_packed_histograms" in caplog.text
        columns = [c[1] for c in conn(store).execute("PRAGMA table_info(rollup_hist)")]
        assert columns == ["dim", "key", "metric", "res", "t", "counts"]
        assert reads(store) == before
        check_agrees(store)
        ingest(store, workload(9, 50))  # the writer goes on adding into the packed cells
        check_agrees(store)
    finally:
        store.close()


def test_packed_histograms_refuse_what_is_not_one() -> None:
    assert buckets.unpack(buckets.pack([0, 3, 0, 1, 0, 0])) == [0, 3, 0, 1]
    assert buckets.pack([0] * buckets.COUNT) == b"" and buckets.unpack(None) == []
    assert buckets.unpack(buckets.add_packed(buckets.pack([1]), buckets.pack([0, 0, 2]))) == [
        1, 0, 2,
    ]  # fmt: skip
    full = buckets.pack([buckets.MAX_COUNT])
    assert buckets.unpack(buckets.add_packed(full, full)) == [buckets.MAX_COUNT]
    for bad in (b"\x01", b"\x00" * 8 * (buckets.COUNT + 1), (-1).to_bytes(8, "little", signed=True),
                [1] * (buckets.COUNT + 1), [-1], ["1"], "1:2", 3):  # fmt: skip
        with pytest.raises(ValueError):
            buckets.unpack(bad)
    for counts in ([-1], [buckets.MAX_COUNT + 1], [0] * (buckets.COUNT + 1)):
        with pytest.raises(ValueError):
            buckets.pack(counts)


def test_a_cell_that_is_not_a_histogram_counts_nothing(store: Store) -> None:
    ingest(store, workload(10, 40))
    before = store.since_ever("name")
    assert any(before["proj.add"]["run"])
    store.writer().execute(
        "UPDATE rollup_hist SET counts = x'0102'"
        " WHERE dim = 'name' AND key = 'proj.add' AND res = 0 AND metric = 'run'"
    )
    after = store.since_ever("name")
    assert after["proj.add"]["run"] == [0] * buckets.COUNT  # refused whole, not half read
    assert {**after, "proj.add": before["proj.add"]} == before  # the rest as it was
    assert {k: v for k, v in after["proj.add"].items() if k != "run"} == {
        k: v for k, v in before["proj.add"].items() if k != "run"
    }


@pytest.mark.parametrize("fold", [False, True])
def test_stats_and_stats_by_add_up_to_the_totals(store: Store, fold: bool) -> None:
    ingest(store, workload(6, 200))
    if fold:
        store.open_writer(Upkeep(minutes_for=3600)).fold(now=T0 + 3 * 3600)
    since, until = T0 - 3600, T0 + 5 * 3600
    points = store.stats(since, until, 600, "all", "")
    assert [p["t"] for p in points] == list(range(int(since // 600) * 600, int(until), 600))
    summed = {c: sum(p[c] for p in points) for c in rollup_tables.OUTCOMES}
    assert summed == totals(store)[""]
    assert Counter({b: n for b, n in enumerate(
        [sum(col) for col in zip(*(p["run"] for p in points), strict=True)]) if n}
    ) == hist(store, "run")  # fmt: skip
    by_name = store.stats_by("name", since, until)
    assert {k: {c: v[c] for c in rollup_tables.OUTCOMES} for k, v in by_name.items()} == totals(
        store, "name"
    )
    mail = store.stats(since, until, 3600, "queue", "mail")
    assert sum(p["sent"] for p in mail) == totals(store, "queue")["mail"]["sent"]
    assert store.stats(since, until, 600, "name", "no.such.task")[0]["sent"] == 0


def test_since_ever_and_tasks_by_state(store: Store) -> None:
    ingest(store, workload(7, 100))
    ever = store.since_ever("name")
    assert {k: {c: v[c] for c in rollup_tables.OUTCOMES} for k, v in ever.items()} == totals(
        store, "name", "res = 0"
    )
    assert {
        (name, state, n) for name, by in store.tasks_by_state().items() for state, n in by.items()
    } == task_counts_truth(store)


def linked(seed: int, tasks: int) -> list[Event]:
    """Tasks in flows and traces: roots, groups and traces drawn from the same ids (a root
    that is itself in a group, or not its own root, a root never seen), and tasks seen
    only starting, without a name."""
    chance = random.Random(seed)
    ids = [f"l-{seed}-{n}" for n in range(tasks)]
    found: list[Event] = []
    for task_id in ids:
        fields = {
            "root_id": chance.choice([None, task_id, "never-seen", *ids[:4]]),
            "group_id": chance.choice([None, None, "g-1", "g-2", task_id, *ids[4:6]]),
            "trace_id": chance.choice([None, task_id, "trace-x", *ids[:3]]),
        }
        found += lifecycle(
            task_id,
            chance.choice(NAMES),
            T0 + chance.uniform(0, 600),
            chance.choice(OUTCOMES),
            runtime=chance.choice((0.004, 2.5)),
            **fields,
        )
        if chance.random() < 0.2:
            found.append(task_event("started", f"{task_id}-x", T0, worker=W1, retries=0))
    # a root in a group named after one of its children: that child is in no flow
    found += lifecycle(f"l-{seed}-r", "proj.add", T0, group_id=f"l-{seed}-c")
    found += lifecycle(f"l-{seed}-c", "proj.add", T0 + 1, root_id=f"l-{seed}-r")
    return found


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), split=st.floats(0, 1), batch=st.integers(1, 60))
def test_rows_counted_as_inserted_are_the_rows_read_back(
    tmp_path_factory: pytest.TempPathFactory, seed: int, split: float, batch: int
) -> None:
    """What :func:`tally.inserted_rows` works out in Python from the values a batch wrote
    is what the SELECT works out in SQL from the stored rows (rowids past ``top`` count as
    inserted; the roots of their flows may be among them, stored before, or nowhere)."""
    events = workload(seed, 20) + linked(seed, 30)
    random.Random(seed).shuffle(events)
    store = Store(tmp_path_factory.mktemp("r") / "r.db")
    try:
        with mock.patch.object(tally, "tally", lambda *_: None):  # no task counted yet
            ingest(store, events, batch)
        stored = (
            conn(store)
            .execute(f"SELECT rowid, {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY rowid")
            .fetchall()
        )
        rowids = {row[1]: row[0] for row in stored}
        top = stored[int(split * (len(stored) - 1))][0]
        written = tally.Written([row[1:] for row in stored], COLUMN_AT, rowids, top)
        python = tally.inserted_rows(conn(store), written, json.dumps)
        inserted = [rowid for rowid in rowids.values() if rowid > top]
        sql = conn(store).execute(tally.select_sql(
            "t.rowid IN (SELECT value FROM json_each(?))"), (json.dumps(inserted),)
        ).fetchall()  # fmt: skip
        assert python == sql
    finally:
        store.close()
