"""PostgreSQL's workflows and traces lists give SQLite's pages, cursors and all, on the same
events (the factories' scenarios shuffled and delivered twice); and PostgreSQL's store is
the whole of the store's surface."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stemtrace.core.events import Event
from stemtrace.store import BadCursor, Store
from stemtrace.store.lists import FLOW_OUTCOMES, FlowFilters
from stemtrace.store.pg import PgStore
from stemtrace.store.surface import Backend
from tests.factories import BIG_GROUP, FANOUT, STEP, big_group, lifecycle
from tests.pg import NOW, filled_pair, workload
from tests.site import copy_of

pytestmark = pytest.mark.usefixtures("fixed_clock")

TWINS = ("Zeta-root", "alpha-root", "beta-root", "\u00e9t\u00e9-root")
"""Flows first seen at one instant, their keys in an order a locale's collation changes."""


def twins(t: float) -> list[Event]:
    """Four flows of a root and a child each, the children sent at one instant, in
    explicit traces of the same names; one child failed, one runs, the others succeeded."""
    found: list[Event] = []
    for root, outcome in zip(TWINS, ("FAILURE", "STARTED", "SUCCESS", "SUCCESS"), strict=True):
        trace = root.replace("root", "trace")
        found += lifecycle(root, "proj.twin", t - 5, trace_id=trace)
        found += lifecycle(
            root.replace("root", "child"),
            "proj.twin.child",
            t,
            outcome,
            parent_id=root,
            root_id=root,
            trace_id=trace,
        )
    return found


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, pg_server: str, pg_migrated: str
) -> Iterator[tuple[Store, PgStore]]:
    """The two stores, filled once for the module: every test of them only reads."""
    events = (workload() + big_group(NOW - 1000)) * 2
    random.Random(1819).shuffle(events)
    events += twins(NOW - 500)  # in order: each child first seen sent, at one instant
    path = copy_of(migrated, tmp_path_factory.mktemp("lists") / "s.db")
    with filled_pair(path, pg_server, pg_migrated, events, 41) as pair:
        yield pair


def flow_pages(store: Any, filters: FlowFilters, limit: int) -> list[tuple[list[Any], Any]]:
    pages = [store.list_flows(filters, None, limit)]
    while pages[-1][1] is not None:
        pages.append(store.list_flows(filters, pages[-1][1], limit))
    return pages


def trace_pages(
    store: Any, since: float | None, until: float | None, limit: int
) -> list[tuple[list[Any], Any]]:
    pages = [store.list_traces(since, until, None, limit)]
    while pages[-1][1] is not None:
        pages.append(store.list_traces(since, until, pages[-1][1], limit))
    return pages


FLOW_FILTERS = [
    FlowFilters(),
    *(FlowFilters(outcome=outcome) for outcome in FLOW_OUTCOMES),
    FlowFilters(name="proj.twin"),
    FlowFilters(name="proj.tasks.resize"),  # a group's: any member's
    FlowFilters(name="proj.twin", outcome="succeeded"),
    FlowFilters(since=NOW - 1500, until=NOW - 400),
    FlowFilters(since=NOW - 500, until=NOW - 499, outcome="failed"),
    FlowFilters(name="no.such.task"),
]


@pytest.mark.parametrize("filters", FLOW_FILTERS, ids=repr)
@pytest.mark.parametrize("limit", [1, 3, 100])
def test_flows_list_the_same_page_by_page(
    both: tuple[Store, PgStore], filters: FlowFilters, limit: int
) -> None:
    sqlite, pg = both
    expected = flow_pages(sqlite, filters, limit)
    found = flow_pages(pg, filters, limit)
    assert found == expected
    if filters.name != "no.such.task":
        assert expected[0][0], "the filter finds something"


def test_the_flows_list_holds_every_scenario(both: tuple[Store, PgStore]) -> None:
    _, pg = both
    rows, cursor = pg.list_flows(FlowFilters(), None, 100)
    assert cursor is None
    ids = [row["id"] for row in rows]
    assert {BIG_GROUP, FANOUT, STEP[1], *TWINS} <= set(ids)
    # One instant, newest first by key in code point order: "Z" < "a" < "b" < "é".
    assert [i for i in ids if i in TWINS] == sorted(TWINS, reverse=True)
    flows = {row["id"]: row for row in rows}
    assert flows[BIG_GROUP]["outcome"] == "running" and flows[BIG_GROUP]["tasks"] == 300
    assert flows["Zeta-root"]["outcome"] == "failed"
    assert flows[FANOUT]["shape"]["chords"] == 1 and flows[FANOUT]["tasks"] == 5
    assert flows[STEP[1]]["shape"]["chains"] == 1 and flows[STEP[1]]["outcome"] == "broken"
    assert flows["beta-root"]["shape"]["spawned"] == 1
    assert {row["outcome"] for row in rows} >= {"running", "failed", "succeeded"}


@pytest.mark.parametrize(
    ("since", "until"), [(None, None), (NOW - 1500, None), (None, NOW - 499), (NOW, None)]
)
@pytest.mark.parametrize("limit", [1, 2, 100])
def test_traces_list_the_same_page_by_page(
    both: tuple[Store, PgStore], since: float | None, until: float | None, limit: int
) -> None:
    sqlite, pg = both
    expected = trace_pages(sqlite, since, until, limit)
    assert trace_pages(pg, since, until, limit) == expected
    if since != NOW:
        assert expected[0][0], "the window finds something"


def test_the_traces_list_holds_every_scenario(both: tuple[Store, PgStore]) -> None:
    _, pg = both
    rows, _ = pg.list_traces(None, None, None, 100)
    traces = {row["trace_id"]: row for row in rows}
    assert {"trace-shop", "trace-feed", BIG_GROUP, "Zeta-trace", "été-trace"} <= set(traces)
    assert [t for t in traces if t.endswith("-trace")] == sorted(
        (t.replace("root", "trace") for t in TWINS), reverse=True
    )
    assert traces[BIG_GROUP]["tasks"] == 300 and traces[BIG_GROUP]["running"] == 30
    assert traces["Zeta-trace"]["first_task"] == {"id": "Zeta-root", "name": "proj.twin"}
    assert traces["alpha-trace"]["running"] == 1 and traces["Zeta-trace"]["failures"] == 1


def test_a_bad_cursor_is_refused_as_sqlite_refuses_it(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    for store in (sqlite, pg):
        with pytest.raises(BadCursor):
            store.list_flows(FlowFilters(), "not-a-cursor", 10)
        with pytest.raises(BadCursor):
            store.list_traces(None, None, "not-a-cursor", 10)


def test_an_empty_store_lists_nothing(pg: PgStore) -> None:
    assert pg.list_flows(FlowFilters(), None, 10) == ([], None)
    assert pg.list_traces(None, None, None, 10) == ([], None)


def test_the_postgresql_store_is_the_whole_surface(pg: PgStore) -> None:
    """Every member of the Backend protocol, with the same parameters (mypy checks the
    types: ``stemtrace.store.pg.store._is_backend``)."""
    members = [name for name in vars(Backend) if not name.startswith("_")]
    assert "list_flows" in members and "list_traces" in members
    for name in members:
        declared = getattr(Backend, name)
        found = getattr(type(pg), name)
        if isinstance(declared, property):
            assert isinstance(found, property), name
            continue
        wanted = list(inspect.signature(declared).parameters)
        assert list(inspect.signature(found).parameters) == wanted, name
