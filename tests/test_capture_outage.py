"""With the event transport down, tasks run as before; events flow again when it returns."""

from __future__ import annotations

import pytest
from celery import group

import stemtrace
from tests.proj import make_app
from tests.support import PrivateRedis, Scenario, celery_worker, wait_for


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_redis_down_while_tasks_run(scenario: Scenario, pool: str) -> None:
    events_redis = PrivateRedis()
    events_redis.start()
    scenario.transport_url = events_redis.url
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(
        app,
        transport_url=events_redis.url,
        stream=scenario.stream,
        flush_interval=0.05,
        buffer_size=20,
    )
    assert capture is not None
    add = app.tasks["proj.add"]
    try:
        with celery_worker(
            scenario, pool=pool, STEMTRACE_BUFFER_SIZE="20", STEMTRACE_HEARTBEAT_INTERVAL="0.5"
        ):
            before = add.delay(1, 1)
            assert before.get(timeout=20) == 2
            wait_for(lambda: scenario.of(before.id, "succeeded"))

            events_redis.stop()
            during = group(add.s(i, i) for i in range(60)).apply_async()
            # Every task still succeeds, none waits for the missing Redis.
            assert during.get(timeout=30) == [2 * i for i in range(60)]
            assert capture.publisher.dropped > 0

            events_redis.start()  # empty: a fresh server on the same port

            def flowing_again() -> bool:
                # Publishers retry with backoff (at most 5 s); until each has
                # reconnected its full buffer keeps dropping, so probe.
                after = add.delay(2, 2)
                assert after.get(timeout=20) == 4
                full = {"sent", "received", "started", "succeeded"}
                try:
                    wait_for(lambda: {e["kind"] for e in scenario.of(after.id)} == full, 2)
                except AssertionError:
                    return False
                return True

            wait_for(flowing_again, timeout=30, interval=0.5)
            heartbeats = wait_for(
                lambda: [
                    e
                    for e in scenario.events()
                    if e["kind"] == "worker_heartbeat" and e["dropped"] > 0
                ],
                timeout=20,
            )
            assert heartbeats[0]["dropped"] > 0
        assert capture.publisher.stats()["send_errors"] >= 1
    finally:
        capture.publisher.close(0.5)
        app.close()
        events_redis.stop()
