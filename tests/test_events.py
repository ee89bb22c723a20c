from __future__ import annotations

import json
from typing import Any

import pytest

from stemtrace.core import events as ev
from tests.factories import T0, event, started

STARTED = started(1)
"""A valid event: the variants below each break one thing in it."""


def test_a_frame_round_trips() -> None:
    events = [STARTED, {**STARTED, "kind": "worker_heartbeat", "task_id": None, "active": 1}]
    decoded = ev.decode_frame(ev.encode_frame(events))
    assert decoded.errors == [] and decoded.events == events


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("text", "not a JSON object"),
        ({**STARTED, "kind": "exploded"}, "unknown kind"),
        ({**STARTED, "kind": ["sent"]}, "unknown kind"),
        ({**STARTED, "kind": {"a": 1}}, "unknown kind"),
        ({**STARTED, "ts": "yesterday"}, "field 'ts' has type str"),
        ({**STARTED, "pid": True}, "field 'pid' has type bool"),
        ({k: v for k, v in STARTED.items() if k != "task_id"}, "missing field 'task_id'"),
        ({**STARTED, "task_id": ""}, "empty task_id"),
        ({**STARTED, "retries": "2"}, "field 'retries' has type str"),
        ({**STARTED, "chain": [{"id": 3, "name": "x"}]}, "malformed link"),
        ({**STARTED, "chain": ["x"]}, "malformed link"),
    ],
)
def test_invalid_events_are_skipped_with_a_reason(event: Any, reason: str) -> None:
    frame = json.dumps({"v": 1, "events": [STARTED, event]})
    decoded = ev.decode_frame(frame)
    assert decoded.events == [STARTED]
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
    decoded = ev.decode_frame(ev.encode_frame([{**STARTED, "future_field": {"x": 1}}]))
    assert decoded.events[0]["future_field"] == {"x": 1}


def test_a_remembered_shape_still_gets_its_value_and_kind_checks() -> None:
    worker = event("worker_heartbeat", T0, "h", 1)
    assert ev.validate_event(worker) is None
    assert ev.validate_event({**worker, "kind": "sent"}) == "missing field 'task_id'"
    assert ev.validate_event({**STARTED, "chain": [{"id": "a", "name": "x"}]}) is None
    assert ev.validate_event({**STARTED, "chain": [{"id": "a", "name": "x"}], "task_id": ""}) == (
        "empty task_id"
    )
    assert "malformed link" in str(ev.validate_event({**STARTED, "chain": [{"id": "a"}]}))
