"""Eager tasks (``.apply()``, ``task_always_eager``) run in the caller: no leaks into it."""

from __future__ import annotations

import uuid
from typing import Any
from unittest import mock

from celery import Celery

import stemtrace
from stemtrace.capture import capture as capture_module
from stemtrace.core.events import decode_frame
from stemtrace.transports.memory import stream_for


def test_eager_runs_are_captured_and_leave_the_callers_trace_alone() -> None:
    stream = f"eager-{uuid.uuid4().hex[:8]}"
    app = Celery("eager", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="eager.login")
    def login(user: str, password: str) -> str:
        return user

    @app.task(shared=False, name="eager.boom")
    def boom() -> None:
        raise KeyError("nope")

    capture = stemtrace.init(app, transport_url="memory://eager", stream=stream)
    assert capture is not None
    assert stemtrace.current_trace_id() is None
    login.apply(("ada", "hunter2"))
    assert stemtrace.current_trace_id() is None
    with stemtrace.trace("outer"):
        boom.apply()
        assert stemtrace.current_trace_id() == "outer"
    assert stemtrace.current_trace_id() is None
    assert capture.publisher.flush(5)

    events: list[dict[str, Any]] = []
    for _, frame in stream_for("memory://eager", stream).read_after(0, 1000):
        events.extend(decode_frame(frame).events)
    started = [e for e in events if e["kind"] == "started"]
    assert [e["name"] for e in started] == ["eager.login", "eager.boom"]
    assert started[0]["args"] == ["ada", {"__stemtrace__": "scrubbed"}]
    assert started[1]["trace_id"] == "outer"
    failed = next(e for e in events if e["kind"] == "failed")
    assert failed["exc_type"] == "KeyError" and failed["runtime"] >= 0
    capture.publisher.close(1)


def test_nested_eager_runs_each_close_their_own() -> None:
    """A task that applies tasks eagerly, itself among them: each success names its own run."""
    stream = f"nested-{uuid.uuid4().hex[:8]}"
    app = Celery("nested", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="nested.leaf")
    def leaf(n: int) -> int:
        return n

    @app.task(shared=False, name="nested.outer", bind=True)
    def outer(self: Any, depth: int) -> int:
        total = leaf.apply((depth,)).get()
        if depth:
            total += outer.apply((depth - 1,), task_id=f"inner-{depth}").get()
        return total

    capture = stemtrace.init(app, transport_url="memory://nested", stream=stream)
    assert capture is not None
    with stemtrace.trace("nest"):
        assert outer.apply((2,), task_id="top").get() == 3
        assert stemtrace.current_trace_id() == "nest"
    assert stemtrace.current_trace_id() is None
    assert capture._runs() == []  # every run closed
    assert capture.publisher.flush(5)

    events: list[dict[str, Any]] = []
    for _, frame in stream_for("memory://nested", stream).read_after(0, 1000):
        events.extend(decode_frame(frame).events)
    succeeded = [(e["task_id"], e["name"]) for e in events if e["kind"] == "succeeded"]
    started = [(e["task_id"], e["name"]) for e in events if e["kind"] == "started"]
    assert sorted(succeeded) == sorted(started) and len(started) == 6
    # innermost first: each outer run ends after the runs it applied
    assert [task_id for task_id, name in succeeded if name == "nested.outer"] == [
        "inner-1", "inner-2", "top"
    ]  # fmt: skip
    assert all(e["runtime"] >= 0 for e in events if e["kind"] == "succeeded")
    assert {e["trace_id"] for e in events if e["kind"] == "started"} == {"nest"}
    capture.publisher.close(1)


def test_a_run_whose_start_could_not_be_read_still_ends_under_its_own_id() -> None:
    stream = f"broken-{uuid.uuid4().hex[:8]}"
    app = Celery("broken", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="broken.leaf")
    def leaf() -> int:
        return 1

    capture = stemtrace.init(app, transport_url="memory://broken", stream=stream)
    assert capture is not None
    stale = ["stale", "broken.leaf", None, None, 0.0, None]  # a run that never ended
    capture._runs().append(stale)
    with mock.patch.object(capture_module, "set_trace_id", side_effect=RuntimeError("bug")):
        assert leaf.apply(task_id="first").get() == 1
    assert leaf.apply(task_id="second").get() == 1
    assert capture._runs() == [stale]  # not taken for either
    assert capture.publisher.flush(5)
    events: list[dict[str, Any]] = []
    for _, frame in stream_for("memory://broken", stream).read_after(0, 1000):
        events.extend(decode_frame(frame).events)
    assert [(e["kind"], e["task_id"]) for e in events] == [
        ("succeeded", "first"),  # its started event was lost to the bug, not its end
        ("started", "second"),
        ("succeeded", "second"),
    ]
    capture.publisher.close(1)
