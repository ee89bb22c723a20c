"""PostgreSQL's reads of flows, traces, groups, workers, in-flight tasks, queues and the
sorted lists give SQLite's answers on the same events (shuffled, delivered twice)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stemtrace.core.events import Event
from stemtrace.model import flows
from stemtrace.store import BadCursor, Store, TaskFilters, depths, fleet, queries, worker_detail
from stemtrace.store.pg import PgStore
from stemtrace.store.pg.shared_reads import RESPELLED, Spelled
from tests.factories import (
    ADD_CHILD,
    BIG_GROUP,
    CHORD_GROUP,
    COLLECT,
    EMAIL_RETRY,
    FANOUT,
    HEADER,
    STEP,
    W1,
    W2,
    Task,
    big_group,
    big_group_member,
    registry_entry,
    worker_event,
)
from tests.pg import NOW, filled_pair, workload
from tests.site import copy_of

pytestmark = pytest.mark.usefixtures("fixed_clock")

ETA = "2031-01-01T00:00:00+00:00"
HELD, DUE, SOON, BLIND, LATE = (f"e0000000-0000-4000-8000-00000000000{i}" for i in range(1, 6))


def waiting_tasks(t: float) -> list[Event]:
    """Tasks not started: held, due later (an ETA), sent at one instant, never seen sent."""
    ping = "proj.tasks.ping"
    return [
        Task(HELD, ping).sent(t), Task(HELD, ping).received(t + 1, W1),
        Task(DUE, ping).sent(t, eta=ETA), Task(DUE, ping).received(t + 1, W1, eta=ETA),
        Task(SOON, ping).sent(t + 5, eta=ETA, queue="slow"),
        Task(LATE, ping).sent(t + 5, queue="slow"),
        Task(BLIND, ping).received(t + 2, W1),
        Task(big_group_member(999), "proj.tasks.resize", group_id=BIG_GROUP).sent(t),
    ]  # fmt: skip


def limits() -> list[Event]:
    defs = [
        registry_entry("proj.tasks.ping", time_limit=30.0, soft_time_limit=20.0, queue="pings"),
        registry_entry("Proj.Upper", soft_time_limit=5.0),
        registry_entry("proj.tasks.resize", queue=None),
    ]
    queues = ["celery", "pings", "Zeta", "alpha"]
    return [worker_event("worker_online", W1, NOW - 100, freq=2.0, tasks=defs, queues=queues)]


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, pg_server: str, pg_migrated: str
) -> Iterator[tuple[Store, PgStore]]:
    """The two stores, filled once for the module: every test of them only reads (the
    sorted lists' clock stays at NOW for the module)."""
    events = (workload() + big_group(NOW - 1000) + waiting_tasks(NOW - 50)) * 2 + limits()
    random.Random(1818).shuffle(events)
    path = copy_of(migrated, tmp_path_factory.mktemp("reads2") / "s.db")
    clock = "stemtrace.store.ranked.time"
    with filled_pair(path, pg_server, pg_migrated, events, 37, clock) as (sqlite, pg):
        for n, at in enumerate((NOW - 400, NOW - 130, NOW - 125)):
            samples = {"celery": (4 + 3 * n, 2, None), "slow": (None, None, "no such queue")}
            for store in (sqlite, pg):
                store.open_writer().record_depths(samples, at)
        yield sqlite, pg


def ids_of(store: Store) -> list[str]:
    rows, _ = store.list_tasks(TaskFilters(), None, 10_000)
    return [row["id"] for row in rows]


def by_id(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if rows is None else sorted(rows, key=lambda row: row["id"])


def test_flows_read_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    planned = [STEP[3], STEP[4], COLLECT]  # chain links that never ran; a chord callback
    wanted = [*ids_of(sqlite), CHORD_GROUP, BIG_GROUP, *planned, "no-such-task"]
    for task_id in wanted:
        expected = sqlite.flow_rows(task_id)
        found = pg.flow_rows(task_id)
        assert by_id(found) == by_id(expected), task_id
        if expected is not None and found is not None:
            assert found == expected, task_id  # in one order: first seen first
            assert flows.build_flow(found) == flows.build_flow(expected), task_id
    assert pg.flow_rows("no-such-task") is None
    assert len(pg.flow_rows(BIG_GROUP) or []) == 301
    step_flow = pg.flow_rows(STEP[4]) or []
    assert {STEP[1], STEP[2]} <= {row["id"] for row in step_flow}
    assert {FANOUT, *HEADER} <= {row["id"] for row in pg.flow_rows(COLLECT) or []}


def test_traces_and_groups_read_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    traces = {row["trace_id"] for row in sqlite.list_tasks(TaskFilters(), None, 10_000)[0]}
    for trace_id in [*sorted(t for t in traces if t), "no-such-trace"]:
        assert pg.trace_rows(trace_id) == sqlite.trace_rows(trace_id), trace_id
    assert len(pg.trace_rows(BIG_GROUP)) == 300
    for group_id in (CHORD_GROUP, BIG_GROUP, "no-such-group"):
        for offset, limit in ((0, 10), (0, 1000), (95, 50), (295, 50), (400, 5)):
            expected = sqlite.group_page(group_id, offset, limit)
            assert pg.group_page(group_id, offset, limit) == expected, (group_id, offset)
    size, members = pg.group_page(BIG_GROUP, 0, 1000)
    assert size == 301 and members[0]["id"] == big_group_member(999)  # no index: first
    assert COLLECT not in {row["id"] for row in pg.group_page(CHORD_GROUP, 0, 10)[1]}


def test_workers_and_a_workers_page_read_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    for now, timeout in ((NOW, 60.0), (NOW - 2900, 60.0), (NOW - 2950, 1.0), (NOW, 1e9)):
        assert pg.workers(now, timeout) == sqlite.workers(now, timeout), now
    for hostname in (W1, W2, "celery@nobody"):
        for since, now in ((NOW - 3600, NOW), (NOW - 2960, NOW - 2930), (NOW - 60, NOW)):
            expected = sqlite.worker(hostname, since, now)
            assert pg.worker(hostname, since, now) == expected, (hostname, since)
    page = pg.worker(W1, NOW - 3600, NOW)
    assert page is not None and page["gaps"] and page["held"] and page["scheduled"]
    assert (pg.worker(W2, NOW - 3600, NOW) or {})["scheduled"], "the retry waits"
    assert pg.worker("celery@nobody", NOW - 3600) is None


def test_the_stores_state_reads_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    assert pg.filter_choices() == sqlite.filter_choices()
    assert pg.filter_choices()["names"][0] == "Proj.Upper"  # code point order
    for samples in (0, 3, 20):
        assert pg.skipped(samples) == sqlite.skipped(samples)
    assert pg.skipped()["total"] > 0
    assert pg.is_empty() is sqlite.is_empty() is False
    assert pg.last_write() == sqlite.last_write() == NOW
    assert pg.size_bytes() > 0


def test_an_empty_store_reads_the_same(tmp_path: Path, migrated: Path, pg: PgStore) -> None:
    sqlite = Store(copy_of(migrated, tmp_path / "empty.db"))
    try:
        assert pg.is_empty() is sqlite.is_empty() is True
        assert pg.last_write() is sqlite.last_write() is None
        assert pg.skipped() == sqlite.skipped()
        assert pg.filter_choices() == sqlite.filter_choices()
        assert pg.workers() == sqlite.workers() == []
        assert pg.known_queues() == sqlite.known_queues() == []
        assert pg.scheduled(10) == sqlite.scheduled(10) == (0, [])
        assert pg.waiting_by_queue() == sqlite.waiting_by_queue() == {}
    finally:
        sqlite.close()


def test_inflight_tasks_read_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    assert by_id(pg.inflight()) == by_id(sqlite.inflight())
    for limit in (1, 4, 8):  # of each state a quarter, the longest sent (or never seen sent) first
        assert by_id(pg.inflight(limit)) == by_id(sqlite.inflight(limit)), limit
    assert BLIND in {row["id"] for row in pg.inflight(4)}
    assert {ADD_CHILD, HELD, DUE, SOON, LATE, BLIND, EMAIL_RETRY} <= {
        row["id"] for row in pg.inflight()
    }
    for queue in ("celery", "slow", "nowhere"):
        for sent_at in (NOW - 3600, NOW - 50, NOW - 45, NOW):
            assert pg.ahead_of(queue, sent_at) == sqlite.ahead_of(queue, sent_at), queue
    assert pg.ahead_of("slow", NOW) == 2
    assert pg.time_limits() == sqlite.time_limits()
    assert pg.time_limits()["Proj.Upper"] == (5.0, None)


def test_queues_read_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    assert pg.queue_depths() == sqlite.queue_depths()
    assert pg.known_queues() == sqlite.known_queues()
    assert pg.known_queues()[:4] == ["Zeta", "alpha", "celery", "pings"]
    for since, step in ((NOW - 3600, 60), (NOW - 125, 60), (NOW - 3600, 300), (NOW, 60)):
        queues = ["celery", "slow", "nowhere"]
        assert pg.queue_backlog(queues, since, step) == sqlite.queue_backlog(queues, since, step)
    assert pg.queue_backlog(["celery"], NOW - 3600)["celery"]
    assert pg.waiting_by_queue() == sqlite.waiting_by_queue()
    assert pg.waiting_by_queue()["slow"]["count"] == 2
    for limit in (0, 1, 2, 100):
        assert pg.scheduled(limit) == sqlite.scheduled(limit), limit
    total, rows = pg.scheduled(100)
    assert total >= 3 and {DUE, SOON, EMAIL_RETRY} <= {row["id"] for row in rows}


SORTED = [
    TaskFilters(sort="runtime", since=NOW - 7200),
    TaskFilters(sort="wait", since=NOW - 7200),
    TaskFilters(sort="runtime", since=NOW - 1200, name="proj.tasks.resize"),
    TaskFilters(sort="wait", since=NOW - 3600, states=("PENDING", "RECEIVED", "RETRY")),
    TaskFilters(sort="wait", since=NOW - 7200, q="EMAIL"),
    TaskFilters(sort="runtime", since=NOW - 7200, until=NOW - 900, worker=W2),
]


@pytest.mark.parametrize("filters", SORTED, ids=repr)
def test_sorted_lists_read_the_same_page_by_page(
    both: tuple[Store, PgStore], filters: TaskFilters
) -> None:
    sqlite, pg = both
    cursor: str | None = None
    pages = 0
    while True:
        expected = sqlite.list_tasks(filters, cursor, 7)
        assert pg.list_tasks(filters, cursor, 7) == expected, (filters, cursor)
        pages += 1
        cursor = expected[1]
        if cursor is None:
            break
    whole = sqlite.list_tasks(filters, None, 1000)
    assert pg.list_tasks(filters, None, 1000) == whole
    assert whole[0], "the filter finds something"


def test_a_sorted_list_refuses_what_sqlites_refuses(both: tuple[Store, PgStore]) -> None:
    _, pg = both
    with pytest.raises(BadCursor):
        pg.list_tasks(TaskFilters(sort="wait", since=NOW - 60), "not-a-cursor", 10)
    _, runtime_cursor = pg.list_tasks(TaskFilters(sort="runtime", since=NOW - 7200), None, 2)
    with pytest.raises(BadCursor):
        pg.list_tasks(TaskFilters(sort="wait", since=NOW - 7200), runtime_cursor, 2)
    with pytest.raises(ValueError, match="give since"):
        pg.list_tasks(TaskFilters(sort="runtime"), None, 10)


def test_every_respelled_statement_is_one_sqlite_runs(both: tuple[Store, PgStore]) -> None:
    """A statement changed on SQLite's side would no longer be respelled: caught here."""
    _, pg = both
    with pg.connection() as conn:
        spelled = Spelled(conn)
        depths.scheduled(spelled, 100)
        depths.known(spelled)
        depths.waiting(spelled)
        fleet.workers(spelled, NOW)
        queries.filter_choices(spelled)
        assert worker_detail.worker(spelled, W2, NOW - 3600, NOW, 60.0)
    assert spelled.respelled == set(RESPELLED)
