"""A trace as its flows and as one graph: pure functions on task rows."""

from __future__ import annotations

from typing import Any

from stemtrace.model import traces


def task(task_id: str, seen: float, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id, "name": "proj.step", "state": "SUCCESS", "parent_id": None,
        "root_id": task_id, "group_id": None, "group_index": None, "chord_id": None,
        "chord_name": None, "trace_id": "tr", "worker": "w", "retries": 0, "seen_at": seen,
        "sent_at": seen, "received_at": seen + 0.1, "started_at": seen + 0.2,
        "finished_at": seen + 1.0, "runtime": 0.8, "chain": [], "exc_type": None, **fields,
    }  # fmt: skip


def test_a_chord_is_one_flow_though_each_member_is_its_own_root() -> None:
    members = [task(f"m{i}", 1.0 + i, group_id="g", chord_id="cb") for i in range(5)]
    callback = task("cb", 7.0, group_id="g", parent_id="m4", root_id="m4", name="proj.tsum")
    found = traces.trace_flows("tr", [*members, callback])
    [flow] = found["flows"]
    assert flow["id"] == "g" and flow["root"]["kind"] == "chord"
    assert len(flow["tasks"]) == 6 and flow["wall_time"] == 7.0
    graph = found["graph"]
    assert graph["root_id"] == "trace:tr"
    assert [e for e in graph["edges"] if e["kind"] == "trace"] == [
        {"source": "trace:tr", "target": "group:g", "kind": "trace"}
    ]


def test_flows_with_failures_come_first_and_their_failures_first() -> None:
    rows = [
        task("a", 1.0),
        task("b", 2.0),
        task("b1", 2.5, parent_id="b", root_id="b"),
        task("b2", 2.6, parent_id="b", root_id="b", state="FAILURE", exc_type="ValueError"),
    ]
    flows = traces.trace_flows("tr", rows)["flows"]
    assert [f["id"] for f in flows] == ["b", "a"]
    assert [t["id"] for t in flows[0]["tasks"]] == ["b2", "b", "b1"]
    assert traces.trace_flows("tr", rows)["graph"]["nodes"][0]["state"] == "FAILURE"


def test_members_of_a_collapsed_group_count_in_its_flow() -> None:
    rows = [task("p", 0.0)] + [
        task(f"m{i}", 1.0, group_id="big", parent_id="p", root_id=f"m{i}") for i in range(300)
    ]
    [flow] = traces.trace_flows("tr", rows)["flows"]
    assert flow["id"] == "p" and len(flow["tasks"]) == 301


def test_a_parent_outside_the_trace_is_not_drawn() -> None:
    found = traces.trace_flows("tr", [task("a", 1.0, parent_id="elsewhere")])
    assert [f["id"] for f in found["flows"]] == ["a"]
    assert {n["id"] for n in found["graph"]["nodes"]} == {"trace:tr", "a"}
