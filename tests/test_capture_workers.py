"""Several workers in one process (``stemtrace demo`` runs two in threads): each one beats."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from celery import Celery

import stemtrace
from stemtrace.core.events import decode_frame
from stemtrace.transports.memory import stream_for

URL = "memory://workers"


def test_every_worker_of_the_process_sends_heartbeats_until_it_shuts_down() -> None:
    app = Celery("two", broker="memory://", set_as_current=False)
    stream = f"workers-{uuid.uuid4().hex[:8]}"
    capture = stemtrace.init(app, transport_url=URL, stream=stream)
    assert capture is not None
    seen = 0

    def new_events() -> list[dict[str, Any]]:
        nonlocal seen
        assert capture.publisher.flush(5)
        found: list[dict[str, Any]] = []
        for entry_id, frame in stream_for(URL, stream).read_after(seen, 1000):
            seen = entry_id
            found.extend(decode_frame(frame).events)
        return found

    def beats() -> list[str]:
        assert capture.publisher.on_tick is not None
        capture.publisher.on_tick()
        return sorted(e["worker"] for e in new_events() if e["kind"] == "worker_heartbeat")

    try:
        for hostname in ("shop@host", "reports@host"):
            capture.on_worker_ready(
                SimpleNamespace(hostname=hostname, pool=None, task_consumer=None)
            )
        assert beats() == ["reports@host", "shop@host"]
        # One stops: the other still beats, through a publisher that is still open.
        capture.on_worker_shutdown(SimpleNamespace(hostname="shop@host"))
        assert [e["worker"] for e in new_events() if e["kind"] == "worker_offline"] == ["shop@host"]
        assert beats() == ["reports@host"]
        capture.on_worker_shutdown(SimpleNamespace(hostname="reports@host"))
        assert capture.publisher.on_tick is None
    finally:
        capture.publisher.close(1)
