"""kombu's in-process ``memory://`` broker (the demo's): its queues counted, never consumed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from stemtrace.ingest.consumer import build_consumer
from stemtrace.settings import SettingError, Settings
from stemtrace.store import open_store
from stemtrace.transports.depths import NO_SUCH_QUEUE, MemoryDepthReader, open_depth_reader


def test_the_memory_broker_s_queues_are_counted_and_left_alone() -> None:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection("memory://localhost/") as connection:
        producer = connection.Producer()
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue])
        reader = open_depth_reader("memory://demo")  # every memory:// URL: this process
        assert isinstance(reader, MemoryDepthReader)
        missing = f"none-{uuid.uuid4().hex[:8]}"
        for _ in range(2):  # read twice: nothing was taken
            found = reader.read([name, missing])
            assert found[name].messages == 3 and found[name].consumers is None
            assert found[missing].messages is None and found[missing].error == NO_SUCH_QUEUE
        with connection.SimpleQueue(queue) as simple:
            simple.get(timeout=1).ack()
        assert reader.read([name])[name].messages == 2
        reader.close()


def test_the_queue_broker_is_polled_apart_from_a_memory_events_stream(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        assert build_consumer(Settings(broker="memory://demo"), store).poller is None
        both = Settings(broker="memory://demo", queue_broker="memory://localhost/")
        poller = build_consumer(both, store).poller
        assert poller is not None
        assert isinstance(poller._open_reader(), MemoryDepthReader)
    finally:
        store.close()


def test_a_queue_broker_must_be_a_url() -> None:
    with pytest.raises(SettingError, match="queue_broker"):
        Settings(queue_broker="localhost")
