"""The queues page against a real worker and a real broker (Redis, then RabbitMQ).

One worker process is busy on a long task while 20 tasks queue behind it: the
queues API shows the count the broker itself gives, the oldest waiting task's
age grows, and a task sent to a queue no worker consumes is flagged with that
queue's name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from starlette.testclient import TestClient

import stemtrace
from stemtrace.server.app import create_app
from stemtrace.server.queues import NOBODY
from stemtrace.settings import Settings
from stemtrace.transports.depths import redis_keys
from tests.proj import make_app
from tests.site import html
from tests.support import AMQP_URL, Scenario, celery_worker, wait_for

QUEUED = 20


def broker_count(scenario: Scenario, queue: str) -> int:
    """What the broker says, asked directly (not through stemtrace)."""
    if scenario.amqp:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            return int(conn.channel().queue_declare(queue, passive=True).message_count)
    client = redis.Redis.from_url(scenario.broker)
    try:
        return sum(int(client.llen(key)) for key in redis_keys(queue))
    finally:
        client.close()


def queue_of(http: TestClient, name: str) -> dict[str, Any] | None:
    body = http.get("/api/queues").json()
    return next((q for q in body["queues"] if q["queue"] == name), None)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, scenario: Scenario) -> Iterator[Scenario]:
    scenario.amqp = request.param == "rabbitmq"
    if scenario.amqp:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            try:
                conn.ensure_connection(max_retries=2)
            except Exception as exc:
                pytest.fail(f"RabbitMQ at {AMQP_URL} is not answering ({exc}); run scripts/test")
    yield scenario
    if scenario.amqp:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            channel = conn.channel()
            for queue in (scenario.queue, f"{scenario.queue}-nobody", f"{scenario.stream}.server"):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                channel.exchange_delete(scenario.stream)
    else:
        client = redis.Redis.from_url(scenario.broker)
        client.delete(*redis_keys(f"{scenario.queue}-nobody"))
        client.close()


def test_the_queue_behind_a_long_task_as_the_broker_counts_it(
    broker: Scenario, tmp_path: Path
) -> None:
    settings = Settings(broker=broker.broker, stream=broker.stream, db=str(tmp_path / "q.db"),
                        queue=f"{broker.stream}.server", queue_poll_seconds=0.5,
                        celery_events=False)  # fmt: skip
    nobody = f"{broker.queue}-nobody"
    app = make_app(broker.broker, broker.queue, broker.backend)
    with TestClient(create_app(settings)) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["connected"])
        capture = stemtrace.init(app, stream=broker.stream, flush_interval=0.05)
        assert capture is not None
        try:
            with celery_worker(broker, concurrency=1, extra_args=["--prefetch-multiplier", "1"]):
                long = app.tasks["proj.slow"].delay(25)
                wait_for(lambda: http.get(f"/api/tasks/{long.id}").json().get("state")
                         == "STARTED", timeout=30)  # fmt: skip
                queued = [app.tasks["proj.add"].delay(i, i) for i in range(QUEUED)]
                orphan = app.tasks["proj.add"].apply_async((1, 2), queue=nobody)

                def settled() -> dict[str, Any] | None:
                    mine = queue_of(http, broker.queue)
                    direct = broker_count(broker, broker.queue)
                    broker_says = (mine or {}).get("broker") or {}
                    # and the sent events are stored too (they come after the messages)
                    return mine if direct >= QUEUED - 2 and broker_says.get(
                        "messages") == direct and mine["waiting"] >= direct else None  # fmt: skip

                mine = wait_for(settled, timeout=30)
                assert mine["workers"], mine  # the worker announced it consumes the queue
                assert mine["problem"] is None
                if broker.amqp:
                    assert mine["broker"]["consumers"] == 1
                assert mine["waiting"] >= mine["broker"]["messages"]
                assert mine["oldest"]["id"] in {r.id for r in queued}
                first_age = mine["oldest"]["age"]
                wait_for(lambda: (queue_of(http, broker.queue) or {})["oldest"]["age"]
                         >= first_age + 1.0, timeout=10)  # fmt: skip

                flagged = wait_for(lambda: (q := queue_of(http, nobody)) and q["problem"]
                                   and (q["broker"] or {}).get("messages") == 1 and q)  # fmt: skip
                assert flagged["problem"] == NOBODY and flagged["workers"] == []
                assert flagged["oldest"]["id"] == orphan.id
                soup = html(http.get("/queues"))
                [row] = [tr for tr in soup.select("tr.queue") if tr["data-queue"] == nobody]
                assert nobody in row.get_text() and NOBODY in row.get_text()
                long.revoke(terminate=True)
        finally:
            capture.publisher.close(1)
            app.close()


def test_a_countdown_task_is_scheduled_with_its_due_time_then_runs(
    scenario: Scenario, tmp_path: Path
) -> None:
    settings = Settings(broker=scenario.broker, stream=scenario.stream,
                        db=str(tmp_path / "c.db"), celery_events=False)  # fmt: skip
    app = make_app(scenario.broker, scenario.queue, scenario.backend)
    with TestClient(create_app(settings)) as http:
        capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
        assert capture is not None
        try:
            with celery_worker(scenario, concurrency=1):
                sent = time.time()
                later = app.tasks["proj.add"].apply_async((2, 2), countdown=4)

                def listed() -> dict[str, Any] | None:
                    body = http.get("/api/queues").json()
                    found = [s for s in body["scheduled"] if s["id"] == later.id]
                    # the worker's received and the sender's sent event, in either order
                    return found[0] if found and found[0]["worker"] and found[0]["queue"] else None

                row = wait_for(listed, timeout=15)
                assert row["state"] == "RECEIVED" and row["queue"] == scenario.queue
                assert row["due"] == pytest.approx(sent + 4, abs=1.5)
                assert 0 < row["due_in"] <= 4.5
                soup = html(http.get("/queues"))
                [cell] = [tr.select_one("td.due") for tr in soup.select("#scheduled tbody tr")
                          if later.id in str(tr)]  # fmt: skip
                assert cell is not None and cell.get_text().strip().startswith("in ")
                assert later.get(timeout=20) == 4

                def gone() -> bool:
                    return all(
                        s["id"] != later.id for s in http.get("/api/queues").json()["scheduled"]
                    )

                wait_for(gone)
        finally:
            capture.publisher.close(1)
            app.close()
