"""No single event can stop ingestion or break a page: the triggers found, through a real stream.

Each trigger was once poison: it wedged the consumer for good (the batch
re-read forever), made pages answer 500, or slowed ingestion 44 times. Here
each sits between two good events on a real Redis stream; the good ones must
be stored, the bad one skipped and counted (or kept with its value cut), and
the consumer must read on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from stemtrace.core.events import Event
from stemtrace.ingest.consumer import Consumer
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store
from stemtrace.transports import open_reader
from stemtrace.transports.redis import FRAME_FIELD
from tests.factories import json_text, started, task_event
from tests.support import Scenario, wait_for

NOW = time.time()


BAD = task_event("started", "bad-task", NOW, eid="bad", name="proj.bad")


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


# name -> (the bad event's JSON text, whether it is skipped (else kept, cut))
TRIGGERS = {
    "nan ts": (json_text(BAD, ts="NaN"), True),
    "infinite ts": (json_text(BAD, ts="Infinity"), True),
    "ts beyond double range": (json_text(BAD, ts="1e400"), True),
    "far-future ts": (json_text(BAD, ts="1e15"), True),
    "ts past year 9999": (json_text(BAD, ts="2.6e11"), True),
    "NUL in task_id": (json_text(BAD, task_id='"a\\u0000b"'), True),
    "10 MB task name": (json_text(BAD, name=json.dumps("n" * 10_000_000)), True),
    "pid beyond 64 bits": (json_text(BAD, pid=str(2**70)), True),
    "args nested 1000 deep": (json_text(BAD, kind='"sent"', args=deep(1000)), False),
    "worker queues nested 900 deep": (
        json_text(BAD, kind='"worker_online"', queues=f"[{deep(900)}, \"celery\"]"), False),
}  # fmt: skip


def frame(*events: str | Event, version: str = "1") -> bytes:
    """A frame of ``events``, each an event or its JSON text."""
    texts = [e if isinstance(e, str) else json_text(e) for e in events]
    return ('{"v": ' + version + ', "events": [' + ", ".join(texts) + "]}").encode()


@pytest.fixture
def client(scenario: Scenario) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(scenario.broker)
    yield found
    found.close()


def test_each_trigger_between_two_good_events(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    n = 0
    for bad, _ in TRIGGERS.values():
        # as a frame of its own between good frames, and inside one frame with good events
        client.xadd(scenario.stream, {FRAME_FIELD: frame(started(n, NOW))})
        client.xadd(scenario.stream, {FRAME_FIELD: frame(bad)})
        client.xadd(
            scenario.stream,
            {FRAME_FIELD: frame(started(n + 1, NOW), bad, started(n + 2, NOW))},
        )
        n += 3
    for version in ("true", "1.0", '"1"'):  # a version must be the integer 1
        client.xadd(scenario.stream, {FRAME_FIELD: frame(started(999, NOW), version=version)})
    client.xadd(scenario.stream, {FRAME_FIELD: frame(started(n, NOW))})
    n += 1
    path = tmp_path / "p.db"
    store = Store(path)
    consumer = Consumer(store, lambda: open_reader(scenario.broker, stream=scenario.stream),
                        source=scenario.stream, block=0.1)  # fmt: skip
    consumer.start()
    try:
        wait_for(lambda: consumer.status.position is not None and n == _count(store, "task-%"),
                 timeout=60)  # fmt: skip
        skipped_triggers = sum(2 for _, skipped in TRIGGERS.values() if skipped)
        wait_for(lambda: consumer.status.skipped == skipped_triggers + 3)
        assert consumer.status.connected and consumer.status.last_error is None
        assert _count(store, "task-0999") == 0  # its frames had no valid version
        # the kept triggers are stored, their values cut with the visible marker
        row = store.reader().conn.execute("SELECT args FROM tasks WHERE id = 'bad-task'")
        args = row.fetchone()[0]
        assert "__stemtrace__" in args and len(args) < 2000
        queues = store.reader().conn.execute("SELECT queues FROM workers").fetchone()[0]
        assert json.loads(queues) == ["celery"]
        # skipped input lasts: counts by reason in the database, with samples
        reasons = dict(store.reader().conn.execute("SELECT reason, count FROM skipped"))
        assert sum(reasons.values()) == consumer.status.skipped
        assert any("ts" in r for r in reasons) and any("control characters" in r for r in reasons)
        assert any("unsupported frame version" in r for r in reasons)
        samples = store.reader().conn.execute("SELECT sample FROM skipped_samples").fetchall()
        assert samples and all(len(s) <= 2001 for (s,) in samples)
        # and still reading: one more good event arrives
        client.xadd(scenario.stream, {FRAME_FIELD: frame(started(n, NOW))})
        wait_for(lambda: _count(store, "task-%") == n + 1)
    finally:
        consumer.stop()
        store.close()
    app = create_app(Settings(db=str(path), consumer=False))
    with TestClient(app) as web:
        for url in ("/", "/tasks/bad-task", "/api/tasks/bad-task", "/workers", "/api/workers",
                    "/status", "/api/health"):  # fmt: skip
            assert web.get(url).status_code == 200, url
        health = web.get("/api/health").json()
        assert health["skipped"]["total"] == skipped_triggers + 3


def _count(store: Store, like: str) -> int:
    conn = store.reader().conn
    return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE id LIKE ?", (like,)).fetchone()[0])
