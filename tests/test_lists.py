"""The lists of workflows, traces and error groups, against real canvases' events."""

from __future__ import annotations

import pytest

from stemtrace.core.events import Event
from stemtrace.store import Backend, FlowFilters
from tests.factories import (
    BIG_GROUP,
    FANOUT,
    STEP,
    big_group,
    chain_events,
    chord_events,
    lifecycle,
)

T = 1_760_000_000.0


@pytest.fixture
def store(backend: Backend) -> Backend:
    """This test's own store, once per backend (``tests/site.py: BACKENDS``)."""
    return backend


def fill(store: Backend, events: list[Event]) -> None:
    store.open_writer().ingest(events)


def canvases() -> list[Event]:
    return [
        *chain_events(T, "FAILURE"),  # step1 ok, step2 failed: step3 and step4 never ran
        *chord_events(T + 100),
        *big_group(T + 200),
        *lifecycle("alone", "proj.tasks.alone", T + 300),  # one task: not a workflow
        *lifecycle("req-1", "proj.tasks.mail", T + 400, trace_id="request-42"),
    ]


def every_flow(store: Backend, filters: FlowFilters, limit: int) -> list[dict[str, object]]:
    found, cursor = store.list_flows(filters, None, limit)
    while cursor is not None:
        more, cursor = store.list_flows(filters, cursor, limit)
        found += more
    return found


def test_workflows_are_listed_newest_first_and_each_opens(store: Backend) -> None:
    fill(store, canvases())
    flows = every_flow(store, FlowFilters(), 2)
    assert [f["id"] for f in flows] == [BIG_GROUP, FANOUT, STEP[1]]
    by_id = {f["id"]: f for f in flows}
    chain = by_id[STEP[1]]
    assert (chain["name"], chain["tasks"], chain["failures"], chain["outcome"]) == (
        "proj.tasks.step1", 2, 1, "broken",
    )  # fmt: skip
    assert chain["shape"] == {"chains": 1, "groups": 0, "chords": 0, "spawned": 0}
    chord = by_id[FANOUT]
    assert (chord["tasks"], chord["outcome"], chord["trace_id"]) == (5, "succeeded", FANOUT)
    assert chord["shape"] == {"chains": 0, "groups": 0, "chords": 1, "spawned": 0}
    assert chord["duration"] == pytest.approx(
        max(r["finished_at"] for r in store.flow_rows(FANOUT) or [])
        - min(r["sent_at"] for r in store.flow_rows(FANOUT) or [])
    )
    for flow in flows:
        rows = store.flow_rows(str(flow["id"]))
        assert rows is not None and len(rows) >= int(str(flow["tasks"]))


def test_flows_filter_by_outcome_name_and_time(store: Backend) -> None:
    fill(store, canvases())
    ids = {
        outcome: [f["id"] for f in every_flow(store, FlowFilters(outcome=outcome), 10)]
        for outcome in ("running", "failed", "succeeded")
    }
    group = big_group(T + 200)
    running = any(e["kind"] == "started" for e in group) and BIG_GROUP in ids["running"]
    assert STEP[1] in ids["failed"] and FANOUT in ids["succeeded"]
    assert running or BIG_GROUP in ids["failed"]
    named = every_flow(store, FlowFilters(name="proj.tasks.fanout"), 10)
    assert [f["id"] for f in named] == [FANOUT]
    assert [f["id"] for f in every_flow(store, FlowFilters(since=T + 50, until=T + 150), 10)] == [
        FANOUT
    ]


def test_traces_list_requests_and_multi_task_traces_not_lone_tasks(store: Backend) -> None:
    fill(store, canvases())
    traces, cursor = store.list_traces(None, None, None, 50)
    assert cursor is None
    by_id = {t["trace_id"]: t for t in traces}
    assert "alone" not in by_id
    assert by_id["request-42"]["tasks"] == 1
    assert by_id["request-42"]["first_task"] == {"id": "req-1", "name": "proj.tasks.mail"}
    assert by_id[FANOUT]["tasks"] == 5 and by_id[FANOUT]["failures"] == 0
    assert traces[0]["trace_id"] == "request-42"  # newest first


def test_error_groups_merge_what_differs_only_by_values(store: Backend) -> None:
    events: list[Event] = []
    for n in range(5):
        events += lifecycle(
            f"pay-{n}", "proj.pay", T + n * 600, "FAILURE",
            exc=("ConnectionError", f"cannot reach 10.0.0.{n}:5432 after {n + 1} tries"),
        )  # fmt: skip
    events += lifecycle("pay-x", "proj.pay", T + 10, "FAILURE", exc=("KeyError", "'user_id'"))
    events += lifecycle("mail-0", "proj.mail", T + 20, "FAILURE", exc=("KeyError", "'user_id'"))
    fill(store, events)
    groups = store.error_groups(None, T - 3600, T + 86400)
    assert [(g["name"], g["exc_type"], g["count"]) for g in groups] == [
        ("proj.pay", "ConnectionError", 5),
        ("proj.mail", "KeyError", 1),
        ("proj.pay", "KeyError", 1),
    ] or [(g["name"], g["exc_type"], g["count"]) for g in groups] == [
        ("proj.pay", "ConnectionError", 5),
        ("proj.pay", "KeyError", 1),
        ("proj.mail", "KeyError", 1),
    ]
    connection = groups[0]
    assert connection["last_task_id"] == "pay-4"
    assert "10.0.0" not in connection["message"]
    assert sum(n for _, n in connection["hours"]) == 5
    assert [g["name"] for g in store.error_groups("proj.mail", T - 3600, T + 86400)] == [
        "proj.mail"
    ]
    assert store.error_groups(None, T + 86400, T + 2 * 86400) == []


def test_a_chord_sent_from_outside_a_task_is_one_workflow(store: Backend) -> None:
    """Its header members are their own roots and its callback's root is one of them
    (as Celery sends them): one flow, under the header's group, opening the whole chord."""
    group, members = "g-outside", [f"m-{n}" for n in range(3)]
    events: list[Event] = []
    for n, member in enumerate(members):
        events += lifecycle(member, "shop.reserve", T + n, group_id=group, group_index=n,
                            chord_id="cb", chord_name="shop.charge")  # fmt: skip
    events += lifecycle("cb", "shop.charge", T + 10, root_id=members[1], parent_id=members[1],
                        group_id=group)  # fmt: skip
    events += lifecycle("rcpt", "shop.receipt", T + 12, root_id=members[1], parent_id="cb")
    fill(store, events)
    flows = every_flow(store, FlowFilters(), 10)
    assert [(f["id"], f["tasks"], f["shape"]["chords"]) for f in flows] == [(group, 5, 1)]
    rows = store.flow_rows(group)
    assert rows is not None and {r["id"] for r in rows} == {*members, "cb", "rcpt"}
