"""Flow reconstruction, critical path, waterfall and export: pure functions on rows."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from stemtrace.model import flows, timeline
from stemtrace.model.export import to_dot, to_svg
from tests.factories import task


def chord_flow() -> dict[str, Any]:
    """a -> chord(b1 fast, b2 slow, b3 fast) -> c: the slow member is on the path."""
    rows = [
        task("a", 0.0, 1.0, chain=[{"id": "g", "name": "celery.chord"}]),
        task("b1", 1.0, 2.0, group_id="g", chord_id="c", parent_id="a", root_id="a"),
        task("b2", 1.0, 9.0, group_id="g", chord_id="c", parent_id="a", root_id="a"),
        task("b3", 1.0, 3.0, group_id="g", chord_id="c", parent_id="a", root_id="a"),
        task("c", 9.1, 10.0, group_id="g", parent_id="b2", root_id="a", name="proj.sum"),
    ]
    return flows.build_flow(rows)


def test_the_critical_path_runs_through_the_slowest_chord_member() -> None:
    path = flows.critical_path(chord_flow(), now=100.0)
    assert path["nodes"] == ["a", "b2", "c"]
    assert path["duration"] == pytest.approx(10.0)
    # the drawn edges along the path, through the chord node
    assert path["edges"] == [
        {"source": "a", "target": "group:g", "kind": "chain"},
        {"source": "group:g", "target": "b2", "kind": "group"},
        {"source": "b2", "target": "c", "kind": "chord"},
    ]


def test_the_critical_path_of_a_running_flow_ends_now() -> None:
    rows = [task("a", 0.0, 1.0), task("b", 1.0, None, state="STARTED", parent_id="a")]
    path = flows.critical_path(flows.build_flow(rows), now=5.0)
    assert path["nodes"] == ["a", "b"] and path["end"] == 5.0


def test_spawned_children_the_parent_outlives_are_not_on_the_path() -> None:
    rows = [task("p", 0.0, 10.0), task("k", 1.0, 2.0, parent_id="p")]
    assert flows.critical_path(flows.build_flow(rows), now=20.0)["nodes"] == ["p"]


def test_waterfall_rows_are_the_timeline_phases_of_a_retried_task() -> None:
    # As Celery does it: the retry's message is re-sent (and received, being an
    # ETA message) from inside attempt 1, before its retry event.
    history = [
        {"kind": "sent", "ts": 0.0, "retries": 0},
        {"kind": "received", "ts": 0.1, "retries": 0},
        {"kind": "started", "ts": 0.2, "retries": 0},
        {"kind": "sent", "ts": 2.5, "retries": 1},
        {"kind": "received", "ts": 2.6, "retries": 1},
        {"kind": "retry", "ts": 3.0, "retries": 0},
        {"kind": "started", "ts": 6.0, "retries": 1},
        {"kind": "succeeded", "ts": 10.0, "retries": 1},
    ]
    rows = flows.waterfall(
        flows.build_flow([task("r", 0.0, 10.0, retries=1)]), now=20.0, histories={"r": history}
    )
    [row] = rows
    segments = [(s["phase"], s["start"], s["end"]) for s in row["segments"]]
    assert segments == [
        ("queued", 0.0, 0.1), ("waiting", 0.1, 0.2), ("running", 0.2, 3.0),
        ("retry", 3.0, 6.0), ("running", 6.0, 10.0),
    ]  # fmt: skip
    phases = timeline.phases(history)
    assert [(p["start"], p["end"]) for p in phases[:-1]] == [(s[1], s[2]) for s in segments]
    attempts = timeline.attempts(history, phases)
    assert [a["ran"] for a in attempts] == pytest.approx([2.8, 4.0])
    assert timeline.durations(phases)["running"] == pytest.approx(6.8)


def test_waterfall_of_a_task_that_ran_once_comes_from_its_row() -> None:
    [row] = flows.waterfall(flows.build_flow([task("a", 0.0, 1.0)]), now=20.0)
    assert [(s["phase"], s["start"], s["end"]) for s in row["segments"]] == [
        ("queued", 0.0, 0.1), ("waiting", 0.1, 0.2), ("running", 0.2, 1.0),
    ]  # fmt: skip


def test_big_groups_collapse_with_true_counts_and_expand_on_request() -> None:
    members = [
        task(
            f"m{i}",
            1.0,
            2.0,
            group_id="big",
            parent_id="p",
            state="FAILURE" if i % 10 else "SUCCESS",
        )
        for i in range(1000)
    ]
    rows = [task("p", 0.0, 1.0), *members]
    flow = flows.build_flow(rows)
    [group] = [n for n in flow["nodes"] if n["kind"] == "group"]
    assert group["collapsed"] and group["size"] == 1000
    assert group["counts"] == {"SUCCESS": 100, "FAILURE": 900}
    assert len(flow["nodes"]) == 2
    assert flow["edges"] == [{"source": "p", "target": "group:big", "kind": "spawned"}]
    expanded = flows.build_flow(rows, expand=frozenset({"big"}))
    assert len(expanded["nodes"]) == 1002
    page = flows.group_members(rows, "big", offset=990, limit=100)
    assert len(page) == 10


HOSTILE = '<script>alert(1)</script>" onload="alert(2)\\'


def test_dot_labels_are_escaped_and_never_html() -> None:
    rows = [task("x", 0.0, 1.0, name=HOSTILE), task('y"<b>', 1.0, 2.0, parent_id="x", name="<b>")]
    dot = to_dot(flows.build_flow(rows))
    assert "label=<" not in dot  # an HTML-like label would render markup
    assert '\\"' in dot and '"y\\"<b>"' in dot


def test_svg_export_keeps_hostile_names_as_text() -> None:
    flow = flows.build_flow([task("x", 0.0, 1.0, name=HOSTILE)])
    svg = to_svg(flow, {"x"})
    root = ET.fromstring(svg)
    tags = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert "script" not in tags and "foreignObject" not in tags
    attributes = [name for element in root.iter() for name in element.attrib]
    assert not [name for name in attributes if name.lower().startswith("on")]
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "<script>alert(1)</script>" in texts
