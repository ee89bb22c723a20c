from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from stemtrace.capture.publisher import Publisher
from stemtrace.core.events import decode_frame
from stemtrace.transports import describe_url, open_sender
from tests.factories import started
from tests.support import read_events, redis_url, wait_for


class FakeSender:
    """Records frames; can be made to fail or to hang until released."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.failing = False
        self.release = threading.Event()
        self.release.set()

    def send(self, frames: Sequence[bytes]) -> None:
        self.release.wait()
        if self.failing:
            raise ConnectionError("broker unreachable")
        self.frames.extend(frames)

    def close(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [e for frame in self.frames for e in decode_frame(frame).events]


def make(sender: FakeSender, **options: Any) -> Publisher:
    options.setdefault("flush_interval", 0.01)
    return Publisher(lambda: sender, describe="fake://", **options)


def test_events_are_sent_in_batches_in_order() -> None:
    sender = FakeSender()
    publisher = make(sender, batch_size=10)
    for n in range(25):
        publisher.publish(started(n))
    assert publisher.flush(5)
    assert [e["eid"] for e in sender.events()] == [f"e{n}" for n in range(25)]
    assert len(sender.frames) >= 3  # at most 10 events per frame
    publisher.close(1)


def test_publish_returns_while_the_sender_hangs() -> None:
    sender = FakeSender()
    sender.release.clear()
    publisher = make(sender, buffer_size=100, batch_size=10)
    for n in range(500):  # the sender is stuck: all of this must still return
        publisher.publish(started(n))
    # The thread took at most one batch before its send hung; the buffer holds 100 more.
    assert publisher.dropped >= 500 - 100 - 10
    sender.release.set()
    assert publisher.flush(5)
    assert len(sender.events()) + publisher.dropped == 500  # each event sent or counted
    publisher.close(1)


def test_outage_drops_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stemtrace")
    sender = FakeSender()
    sender.failing = True
    publisher = make(sender, buffer_size=5)
    for n in range(50):
        publisher.publish(started(n))
    wait_for(lambda: publisher.send_errors >= 2)
    assert publisher.dropped >= 40
    assert len([r for r in caplog.records if "cannot publish" in r.message]) == 1
    sender.failing = False
    wait_for(lambda: sender.frames, timeout=10)
    publisher.publish(started(99))
    assert publisher.flush(5)
    assert "e99" in [e["eid"] for e in sender.events()]
    resumed = [r.message for r in caplog.records if "resumed" in r.message]
    assert len(resumed) == 1 and f"{publisher.dropped} events were dropped" in resumed[0]
    publisher.close(1)


def test_text_json_cannot_encode_does_not_block_later_events() -> None:
    sender = FakeSender()
    publisher = make(sender, batch_size=10)
    publisher.publish(started(1, name="bad \ud800 surrogate", args=[2**70]))
    publisher.publish(started(2))
    assert publisher.flush(5)
    found = sender.events()
    assert [e["eid"] for e in found] == ["e1", "e2"]
    assert found[0]["name"] == "bad ? surrogate" and found[0]["args"] == [2**70]
    publisher.close(1)


def test_a_batch_that_cannot_be_encoded_is_dropped_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stemtrace.capture import publisher as publisher_module

    real = publisher_module.encode_frame

    def refuse_poison(batch: list[dict[str, Any]]) -> bytes:
        if any(e["eid"] == "poison" for e in batch):
            raise ValueError("cannot encode")
        return real(batch)

    monkeypatch.setattr(publisher_module, "encode_frame", refuse_poison)
    sender = FakeSender()
    publisher = make(sender, batch_size=1)
    publisher.publish(started(0, eid="poison"))
    publisher.publish(started(1))
    assert publisher.flush(5)
    assert [e["eid"] for e in sender.events()] == ["e1"]
    assert publisher.dropped == 1 and publisher.send_errors == 0
    publisher.close(1)


def test_describe_url_hides_the_password() -> None:
    assert describe_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert describe_url("redis://host:6379/0") == "redis://host:6379/0"


def test_fork_gives_the_child_its_own_publisher(redis_available: None) -> None:
    stream = f"stemtrace-test:{uuid.uuid4().hex[:12]}"
    url = redis_url(2)
    publisher = Publisher(lambda: open_sender(url, stream=stream, maxlen=1000), flush_interval=0.01)
    publisher.publish(started(1))
    assert publisher.flush(5)
    publisher.publish(started(2))  # may still be buffered at fork: the child must not resend it
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            publisher.publish(started(3))
            code = 0 if publisher.flush(5) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert publisher.flush(5)
    events = read_events(url, stream)
    assert sorted(e["eid"] for e in events) == ["e1", "e2", "e3"]
    publisher.close(1)
    import redis

    client = redis.Redis.from_url(url)
    client.delete(stream)
    client.close()


def test_a_script_that_exits_at_once_still_delivers(redis_available: None) -> None:
    import subprocess
    import sys

    stream = f"stemtrace-test:{uuid.uuid4().hex[:12]}"
    url = redis_url(3)
    script = (
        "import stemtrace\n"
        "from celery import Celery\n"
        f"app = Celery('x', broker={url!r}, set_as_current=False)\n"
        f"stemtrace.init(app, stream={stream!r}, flush_interval=60)\n"
        "@app.task(shared=False)\n"
        "def noop(): pass\n"
        "for _ in range(50): noop.apply_async(queue='stemtrace-exit-test')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    events = read_events(url, stream)
    assert [e["kind"] for e in events] == ["sent"] * 50
    assert len({e["eid"] for e in events}) == 50
    import redis

    client = redis.Redis.from_url(url)
    client.delete(stream, "stemtrace-exit-test")
    client.close()
