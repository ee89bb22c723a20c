"""The RabbitMQ transport end to end: real broker, real workers, the server reading its queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord
from kombu.connection import Connection
from starlette.testclient import TestClient

import stemtrace
from stemtrace.ingest.consumer import build_consumer
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store
from tests.observed import Observed, edges, node
from tests.proj import make_app
from tests.support import AMQP_URL, PrivateRabbit, Scenario, celery_worker, stored_events, wait_for


@pytest.fixture
def rabbit(scenario: Scenario) -> Iterator[Scenario]:
    """The scenario on the shared RabbitMQ, which must answer (the test command starts it)."""
    connection = Connection(AMQP_URL, connect_timeout=3)
    try:
        connection.ensure_connection(max_retries=2)
    except Exception as exc:
        pytest.fail(f"RabbitMQ at {AMQP_URL} is not answering ({exc}); run scripts/test")
    finally:
        connection.release()
    scenario.amqp = True
    yield scenario
    _delete(AMQP_URL, queues=[scenario.queue], exchanges=[scenario.stream, scenario.queue])


def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = Connection(url, connect_timeout=3)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    except Exception:
        pass
    finally:
        connection.release()


def settings_for(scenario: Scenario, db: Path, broker: str = AMQP_URL) -> Settings:
    return Settings(broker=broker, stream=scenario.stream, db=str(db),
                    queue=f"{scenario.stream}.server", retention_days=0)  # fmt: skip


def test_canvas_shapes_through_rabbitmq(rabbit: Scenario, tmp_path: Path) -> None:
    settings = settings_for(rabbit, tmp_path / "a.db")
    app = make_app(rabbit.broker, rabbit.queue, rabbit.backend)
    with TestClient(create_app(settings)) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["connected"])
        capture = stemtrace.init(app, stream=rabbit.stream, flush_interval=0.05)
        assert capture is not None and capture.transport_url == AMQP_URL
        observed = Observed(app, http)
        add, tsum, fail = (app.tasks[n] for n in ("proj.add", "proj.tsum", "proj.fail"))
        with celery_worker(rabbit):
            broken = chain(add.s(1, 1), fail.s(), add.s(5)).apply_async()
            fanned = chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
            with stemtrace.trace("rabbit-trace"):
                retried = app.tasks["proj.flaky"].delay(4)
            assert fanned.get(timeout=30) == 6 and retried.get(timeout=30) == 4

            first, failing = broken.parent.parent.id, broken.parent.id
            flow = observed.flow(first, settled=2)
            assert edges(flow, "chain") == {(first, failing), (failing, broken.id)}
            assert node(flow, broken.id)["state"] == "NOT_RUN"
            flow = observed.flow(fanned.id, settled=4)
            [chord_node] = [n for n in flow["nodes"] if n["kind"] == "chord"]
            assert chord_node["size"] == 3 and len(edges(flow, "chord")) == 3
            task = observed.task(retried.id, "SUCCESS")
            assert [a["state"] for a in task["attempts"]] == ["RETRY", "RETRY", "SUCCESS"]
            assert task["trace_id"] == "rabbit-trace"

            nested = chain(
                add.s(1, 1), chord([chain(add.s(1), add.s(1)), add.s(10)], tsum.s()), add.s(100)
            ).apply_async()
            spawner = app.tasks["proj.spawn"].delay(2)
            secret = app.tasks["proj.login"].delay("ada", "hunter2")
            assert nested.get(timeout=30) == 116 and len(spawner.get(timeout=20)) == 2
            secret.get(timeout=20)
            flow = observed.flow(nested.id, settled=6)
            assert len([n for n in flow["nodes"] if n["kind"] == "task"]) == 6
            assert len(edges(flow, "chord")) == 2
            children = spawner.get(timeout=1)
            flow = observed.flow(spawner.id, settled=3)
            assert edges(flow, "spawned") == {(spawner.id, child) for child in children}
            login = observed.task(secret.id, "SUCCESS")
            assert login["args"] == ["ada", {"__stemtrace__": "scrubbed"}]
        capture.publisher.close(1)
    app.close()
    _delete(AMQP_URL, queues=[settings.queue_name], exchanges=[])


def test_a_server_restart_loses_nothing(rabbit: Scenario, tmp_path: Path) -> None:
    settings = settings_for(rabbit, tmp_path / "r.db")
    app = make_app(rabbit.broker, rabbit.queue, rabbit.backend)
    add = app.tasks["proj.add"]

    def run(store: Store) -> Any:
        consumer = build_consumer(settings, store)
        consumer.start()
        wait_for(lambda: consumer.status.connected)
        return consumer

    store = Store(settings.db)
    consumer = run(store)
    capture = stemtrace.init(app, stream=rabbit.stream, flush_interval=0.05)
    assert capture is not None
    try:
        with celery_worker(rabbit):
            before = [add.delay(i, 1) for i in range(10)]
            assert [r.get(timeout=20) for r in before] == [i + 1 for i in range(10)]
            wait_for(lambda: _succeeded(store) >= 5)
            consumer.stop()  # the server goes away in the middle of the stream
            during = [add.delay(i, 2) for i in range(10)]
            assert [r.get(timeout=20) for r in during] == [i + 2 for i in range(10)]
            assert capture.publisher.flush(5)
        store.close()
        reopened = Store(settings.db)
        again = run(reopened)
        # The worker's main process publishes "received" apart from its pool children:
        # wait for every event, then check that none was stored twice.
        wait_for(
            lambda: _succeeded(reopened) == 20 and stored_events(reopened.reader().conn) >= 80,
            timeout=30,
        )
        again.stop()
        events = stored_events(reopened.reader().conn)
        assert events == 20 * 4  # sent, received, started, succeeded: none lost, none doubled
        reopened.close()
    finally:
        capture.publisher.close(1)
        app.close()
        _delete(AMQP_URL, queues=[settings.queue_name], exchanges=[])


def _succeeded(store: Store) -> int:
    row = store.reader().conn.execute("SELECT COUNT(*) FROM tasks WHERE state = 'SUCCESS'")
    return int(row.fetchone()[0])


def test_a_broker_restart_leaves_tasks_alone_and_events_resume(
    scenario: Scenario, tmp_path: Path
) -> None:
    events_broker = PrivateRabbit()
    events_broker.start()
    settings = settings_for(scenario, tmp_path / "b.db", broker=events_broker.url)
    app = make_app(scenario.broker, scenario.queue)  # tasks on Redis, events on RabbitMQ
    capture = stemtrace.init(
        app, transport_url=events_broker.url, stream=scenario.stream, flush_interval=0.05
    )
    assert capture is not None
    store = Store(settings.db)
    consumer = build_consumer(settings, store)
    consumer.start()
    add = app.tasks["proj.add"]
    try:
        wait_for(lambda: consumer.status.connected, timeout=30)
        env = {"STEMTRACE_TRANSPORT_URL": events_broker.url}
        with celery_worker(scenario, pool="prefork", **env):
            assert add.delay(1, 1).get(timeout=20) == 2
            wait_for(lambda: _succeeded(store) == 1)
            events_broker.stop()
            during = [add.delay(i, i) for i in range(20)]
            assert [r.get(timeout=30) for r in during] == [2 * i for i in range(20)]
            events_broker.start()
            wait_for(lambda: consumer.status.connected, timeout=60)

            def flowing_again() -> bool:
                probe = add.delay(5, 5)
                assert probe.get(timeout=20) == 10
                try:
                    wait_for(lambda: _state(store, probe.id) == "SUCCESS", timeout=3)
                except AssertionError:
                    return False
                return True

            wait_for(flowing_again, timeout=60, interval=0.5)
        assert capture.publisher.stats()["send_errors"] >= 1
    finally:
        consumer.stop()
        store.close()
        capture.publisher.close(0.5)
        app.close()
        events_broker.remove()


def _state(store: Store, task_id: str) -> str | None:
    row = store.reader().conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,))
    found = row.fetchone()
    return None if found is None else str(found[0])


def test_unique_queue_names_per_database(tmp_path: Path) -> None:
    one = Settings(db=str(tmp_path / "one.db")).queue_name
    two = Settings(db=str(tmp_path / "two.db")).queue_name
    assert one != two and one == Settings(db=str(tmp_path / "one.db")).queue_name
    assert Settings(queue="mine").queue_name == "mine"
