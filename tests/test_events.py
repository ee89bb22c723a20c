from __future__ import annotations

import json
from typing import Any

import pytest

from stemtrace.core import events as ev


def task_event(**changes: Any) -> dict[str, Any]:
    event = {
        "kind": "started",
        "eid": "e1",
        "ts": 1_732_900_000.5,
        "host": "h",
        "pid": 7,
        "task_id": "t1",
        "name": "proj.add",
    }
    event.update(changes)
    return event


def test_a_frame_round_trips() -> None:
    events = [task_event(), task_event(kind="worker_heartbeat", task_id=None, active=1)]
    decoded = ev.decode_frame(ev.encode_frame(events))
    assert decoded.errors == [] and decoded.events == events


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("text", "not a JSON object"),
        (task_event(kind="exploded"), "unknown kind"),
        (task_event(kind=["sent"]), "unknown kind"),
        (task_event(kind={"a": 1}), "unknown kind"),
        (task_event(ts="yesterday"), "field 'ts' has type str"),
        (task_event(pid=True), "field 'pid' has type bool"),
        ({k: v for k, v in task_event().items() if k != "task_id"}, "missing field 'task_id'"),
        (task_event(task_id=""), "empty task_id"),
        (task_event(retries="2"), "field 'retries' has type str"),
        (task_event(chain=[{"id": 3, "name": "x"}]), "malformed link"),
        (task_event(chain=["x"]), "malformed link"),
    ],
)
def test_invalid_events_are_skipped_with_a_reason(event: Any, reason: str) -> None:
    frame = json.dumps({"v": 1, "events": [task_event(), event]})
    decoded = ev.decode_frame(frame)
    assert decoded.events == [task_event()]
    assert len(decoded.errors) == 1 and reason in decoded.errors[0]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v": 2, "events": []}', "unsupported frame version 2"),
        (b'{"v": 1}', "no 'events' list"),
    ],
)
def test_unreadable_frames_raise_frame_error(frame: bytes, reason: str) -> None:
    with pytest.raises(ev.FrameError, match=reason):
        ev.decode_frame(frame)


def test_unknown_fields_are_kept_for_forward_compatibility() -> None:
    decoded = ev.decode_frame(ev.encode_frame([task_event(future_field={"x": 1})]))
    assert decoded.events[0]["future_field"] == {"x": 1}


def test_a_remembered_shape_still_gets_its_value_and_kind_checks() -> None:
    worker = {"kind": "worker_heartbeat", "eid": "w", "ts": 1_732_900_000.0, "host": "h", "pid": 1}
    assert ev.validate_event(worker) is None
    assert ev.validate_event({**worker, "kind": "sent"}) == "missing field 'task_id'"
    assert ev.validate_event(task_event(chain=[{"id": "a", "name": "x"}])) is None
    assert ev.validate_event(task_event(chain=[{"id": "a", "name": "x"}], task_id="")) == (
        "empty task_id"
    )
    assert "malformed link" in str(ev.validate_event(task_event(chain=[{"id": "a"}])))
