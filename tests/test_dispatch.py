"""The short cut through ``Signal.send``: taken while stemtrace is alone, never in the way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from celery import Celery, signals
from celery.app import trace
from celery.utils.dispatch import Signal

import stemtrace
from stemtrace.capture import dispatch
from stemtrace.capture.capture import Capture
from stemtrace.core.events import decode_frame
from stemtrace.transports.memory import stream_for


@pytest.fixture
def eager_app() -> Iterator[tuple[Capture, Any, str]]:
    stream = f"dispatch-{uuid.uuid4().hex[:8]}"
    app = Celery("dispatch", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="dispatch.add")
    def add(x: int, y: int) -> int:
        return x + y

    capture = stemtrace.init(app, transport_url="memory://dispatch", stream=stream)
    assert capture is not None
    yield capture, add, stream
    capture.publisher.close(1)


def kinds(stream: str) -> list[str]:
    found: list[str] = []
    for _, frame in stream_for("memory://dispatch", stream).read_after(0, 1000):
        found.extend(event["kind"] for event in decode_frame(frame).events)
    return found


def test_every_task_signal_takes_the_short_cut(eager_app: tuple[Capture, Any, str]) -> None:
    every_task = (
        signals.before_task_publish, signals.task_received, signals.task_prerun,
        signals.task_success,
    )  # fmt: skip
    for signal in every_task:
        assert dispatch.is_direct(signal.send)
    # celery.app.trace bound these at import: they are replaced too.
    assert trace.send_prerun is signals.task_prerun.send
    assert trace.send_success is signals.task_success.send
    assert trace.send_postrun == signals.task_postrun.send  # not ours: Celery's own, untouched


def test_other_receivers_get_celerys_own_send(eager_app: tuple[Capture, Any, str]) -> None:
    capture, add, stream = eager_app
    seen: list[tuple[Any, dict[str, Any]]] = []

    def other(sender: Any = None, **kwargs: Any) -> str:
        seen.append((sender, kwargs))
        return "other's answer"

    signals.task_prerun.connect(other, weak=False)
    try:
        assert add.apply((2, 3)).get() == 5
        responses = signals.task_prerun.send(sender=None, task_id="x", task=None)
    finally:
        signals.task_prerun.disconnect(other)
    assert add.apply((1, 1)).get() == 2  # alone again

    assert seen[0][1]["args"] == (2, 3)
    assert (other, "other's answer") in responses
    assert len(responses) == 2  # stemtrace's receiver ran too
    assert capture.publisher.flush(5)
    found = kinds(stream)
    assert found.count("started") == 2 and found.count("succeeded") == 2


def test_direct_send_answers_like_signal_send() -> None:
    signal = Signal(name="stemtrace_test_signal")
    calls: list[tuple[Any, dict[str, Any]]] = []

    def handler(sender: Any, named: dict[str, Any]) -> int:
        calls.append((sender, named))
        return 7

    receiver = dispatch.receiver_for(handler, "receiver")
    signal.connect(receiver, weak=False)
    assert dispatch.install(signal, receiver, handler)
    direct = signal.send
    assert dispatch.is_direct(direct)
    assert dispatch.install(signal, receiver, handler)  # twice: still the one short cut
    assert signal.send is direct
    sender = object()

    def celerys_path(sender: Any) -> list[Any]:
        raise AssertionError("Celery's own send was taken")

    with mock.patch.object(signal, "_live_receivers", celerys_path):
        assert signal.send(sender=sender, value=1) == [(receiver, 7)]
    assert calls == [(sender, {"value": 1})]

    # Another receiver joins: Celery's own send runs, and calls ours as a receiver.
    other: list[dict[str, Any]] = []
    signal.connect(lambda **kw: other.append(kw), weak=False)
    responses = signal.send(sender=sender, value=2)
    assert [response for _, response in responses] == [7, None]
    assert calls[-1] == (sender, {"value": 2})  # without Celery's "signal" argument
    assert other[0]["value"] == 2


def test_a_send_someone_else_replaced_is_left_alone() -> None:
    signal = Signal(name="stemtrace_test_patched")

    def theirs(sender: Any = None, **named: Any) -> list[Any]:
        return []

    def handler(sender: Any, named: dict[str, Any]) -> None:
        return None

    signal.send = theirs  # type: ignore[method-assign]
    assert not dispatch.install(signal, dispatch.receiver_for(handler, "receiver"), handler)
    assert signal.send is theirs


def test_a_task_sent_through_the_short_cut_is_recorded(eager_app: tuple[Capture, Any, str]) -> None:
    capture, add, stream = eager_app
    signal = signals.before_task_publish
    # Celery's own send filters receivers through _live_receivers: it must not run.
    with mock.patch.object(signal, "_live_receivers", wraps=signal._live_receivers) as celerys:
        # The app's producer binds before_task_publish.send when it is first made: now.
        result = add.apply_async((2, 3), queue=f"q-{uuid.uuid4().hex[:8]}")
    assert celerys.call_count == 0
    assert capture.publisher.flush(5)
    sent = [
        event
        for _, frame in stream_for("memory://dispatch", stream).read_after(0, 1000)
        for event in decode_frame(frame).events
        if event["kind"] == "sent"
    ]
    assert [(e["task_id"], e["args"]) for e in sent] == [(result.id, [2, 3])]
