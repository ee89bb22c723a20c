"""The consumer against a real Redis stream: cursor, restarts, malformed input, outages."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from stemtrace.core.events import encode_frame
from stemtrace.ingest.consumer import Consumer
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store
from stemtrace.store.ingest import Ingestor
from stemtrace.transports import open_reader
from stemtrace.transports.redis import FRAME_FIELD
from tests.factories import started
from tests.support import PrivateRedis, Scenario, free_port, stored_events, wait_for


@pytest.fixture
def client(scenario: Scenario) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(scenario.broker)
    yield found
    found.close()


def add_frames(
    client: redis.Redis, stream: str, first: int, count: int, per_frame: int = 10
) -> None:
    for start in range(first, first + count, per_frame):
        frame = encode_frame(
            [started(n) for n in range(start, min(start + per_frame, first + count))]
        )
        client.xadd(stream, {FRAME_FIELD: frame})


def consumer_for(scenario: Scenario, store: Store, url: str | None = None) -> Consumer:
    broker = url or scenario.broker
    return Consumer(
        store,
        lambda: open_reader(broker, stream=scenario.stream),
        source=f"{broker}#{scenario.stream}",
        block=0.1,
    )


def task_count(store: Store) -> int:
    return int(store.reader().conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])


def test_restart_in_the_middle_loses_and_doubles_nothing(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    store = Store(tmp_path / "a.db")
    add_frames(client, scenario.stream, 0, 300)
    first = consumer_for(scenario, store)
    first.batch_frames = 7  # stop somewhere in the middle of the stream
    first.start()
    wait_for(lambda: first.status.ingested > 0)
    first.stop()
    assert first.status.ingested > 0
    add_frames(client, scenario.stream, 300, 200)
    store.close()

    reopened = Store(tmp_path / "a.db")
    second = consumer_for(scenario, reopened)
    second.start()
    wait_for(lambda: task_count(reopened) == 500)
    second.stop()
    assert first.status.ingested + second.status.ingested == 500
    events = stored_events(reopened.reader().conn)
    assert events == 500
    reopened.close()


def test_two_servers_each_read_the_whole_stream(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    add_frames(client, scenario.stream, 0, 120)
    stores = [Store(tmp_path / f"{name}.db") for name in ("one", "two")]
    consumers = [consumer_for(scenario, store) for store in stores]
    for consumer in consumers:
        consumer.start()
    for store in stores:
        wait_for(lambda store=store: task_count(store) == 120)
    for consumer, store in zip(consumers, stores, strict=True):
        consumer.stop()
        store.close()


def test_malformed_entries_are_skipped_counted_and_explained(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    store = Store(tmp_path / "m.db")
    add_frames(client, scenario.stream, 0, 5)
    client.xadd(scenario.stream, {FRAME_FIELD: b"not json"})
    client.xadd(scenario.stream, {b"other": b"field"})
    client.xadd(scenario.stream, {FRAME_FIELD: b'{"v": 99, "events": []}'})
    bad = [started(10), {"kind": "started", "ts": "x"}, {**started(11), "group_index": 2**70},
           {**started(12), "kind": ["started"]}]  # fmt: skip
    client.xadd(scenario.stream, {FRAME_FIELD: encode_frame(bad)})
    add_frames(client, scenario.stream, 20, 5)
    consumer = consumer_for(scenario, store)
    consumer.start()
    wait_for(lambda: task_count(store) == 12)
    consumer.stop()
    status = consumer.status.as_dict()
    assert status["skipped"] == 5
    reasons = " | ".join(status["recent_skip_reasons"])
    assert "not JSON" in reasons and "unsupported frame version 99" in reasons
    assert "unknown kind ['started']" in reasons
    assert "missing field" in reasons
    ids = {r[0] for r in store.reader().conn.execute("SELECT id FROM tasks")}
    assert "task-0010" in ids and "task-0011" in ids  # a group_index beyond 64 bits is dropped
    row = store.reader().conn.execute("SELECT group_index FROM tasks WHERE id = 'task-0011'")
    assert row.fetchone()[0] is None
    store.close()


def test_an_unreachable_broker_is_reported_then_read_when_it_returns(
    scenario: Scenario, tmp_path: Path
) -> None:
    later = PrivateRedis()  # its port is chosen, but nothing listens there yet
    store = Store(tmp_path / "u.db")
    consumer = consumer_for(scenario, store, url=later.url)
    consumer.start()
    try:
        wait_for(lambda: consumer.status.last_error is not None)
        assert consumer.status.connected is False
        assert "Connection" in (consumer.status.last_error or "")
        later.start()
        client = redis.Redis.from_url(later.url)
        add_frames(client, scenario.stream, 0, 30)
        client.close()
        wait_for(lambda: task_count(store) == 30, timeout=30)
        assert consumer.status.connected is True and consumer.status.last_error is None
    finally:
        consumer.stop()
        store.close()
        later.stop()


def test_a_decoder_failure_skips_only_its_entry(
    scenario: Scenario, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stemtrace.ingest import consumer as consumer_module

    real = consumer_module.decode_frame

    def flaky(frame: bytes, now: float | None = None) -> Any:
        if b"task-0003" in frame:
            raise RuntimeError("decoder bug")
        return real(frame, now)

    monkeypatch.setattr(consumer_module, "decode_frame", flaky)
    store = Store(tmp_path / "d.db")
    add_frames(client, scenario.stream, 0, 6, per_frame=1)
    consumer = consumer_for(scenario, store)
    consumer.start()
    wait_for(lambda: task_count(store) == 5)
    consumer.stop()
    assert consumer.status.skipped == 1
    assert "RuntimeError: decoder bug" in consumer.status.skip_reasons[0]
    store.close()


def test_a_second_consumer_on_one_file_stands_by_until_the_writer_stops(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    """Two servers on one SQLite file once both ingested: every history stored twice."""
    path = tmp_path / "shared.db"
    first_store, second_store = Store(path), Store(path)  # two servers' stores
    first = consumer_for(scenario, first_store)
    second = consumer_for(scenario, second_store)
    add_frames(client, scenario.stream, 0, 50)
    first.start()
    try:
        wait_for(lambda: task_count(first_store) == 50)
        second.start()
        wait_for(lambda: second.status.standby)
        assert "standby" in (second.status.last_error or "")
        assert f"process {os.getpid()}" in (second.status.last_error or "")
        assert second.status.as_dict()["standby"] is True
        first.stop()
        first_store.close()  # the writer goes away: the standby takes over
        add_frames(client, scenario.stream, 50, 10)
        wait_for(lambda: task_count(second_store) == 60, timeout=30)
        assert not second.status.standby and second.status.last_error is None
        histories = (
            second_store.reader()
            .conn.execute("SELECT COUNT(*) FROM history GROUP BY task_rowid HAVING COUNT(*) > 1")
            .fetchall()
        )
        assert histories == []  # each task's events stored once
    finally:
        first.stop()
        second.stop()
        first_store.close()
        second_store.close()


def test_a_standby_server_says_so_instead_of_a_broker_problem(
    scenario: Scenario, tmp_path: Path
) -> None:
    path = tmp_path / "claimed.db"
    writer = Store(path)
    assert writer.claim_writer() is None  # another server's consumer holds the file
    settings = Settings(db=str(path), broker=scenario.broker, stream=scenario.stream,
                        celery_events=False)  # fmt: skip
    try:
        with TestClient(create_app(settings)) as client:
            wait_for(lambda: client.get("/api/health").json()["consumer"]["standby"])
            page = BeautifulSoup(client.get("/").text, "html.parser")
            assert page.select_one("#standby-banner") is not None
            assert page.select_one("#broker-banner") is None
    finally:
        writer.close()


def test_every_page_says_when_the_stream_cannot_be_read(tmp_path: Path) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings(db=str(tmp_path / "b.db"), broker=broker, celery_events=False,
                        queue_poll_seconds=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/api/health").json()["consumer"]["failing"] == "broker")
        page = BeautifulSoup(client.get("/executions").text, "html.parser")
        banner = page.select_one("#broker-banner")
        assert banner is not None and page.select_one("#store-banner") is None
        assert "Cannot read the event stream" in banner.get_text()


def test_every_page_says_when_the_store_cannot_be_written(
    scenario: Scenario, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the store refuses (a full disk, a database down) is the store's fault: the
    banner says so, not that the stream cannot be read, and the events wait in the stream."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Ingestor, "ingest", refuse)
    add_frames(client, scenario.stream, 0, 3)
    settings = Settings(db=str(tmp_path / "s.db"), broker=scenario.broker,
                        stream=scenario.stream, celery_events=False,
                        queue_poll_seconds=0)  # fmt: skip
    with TestClient(create_app(settings)) as web:
        health = wait_for(lambda: _failing(web.get("/api/health").json()))
        assert health["consumer"]["failing"] == "store", health
        assert "disk I/O error" in health["consumer"]["last_error"]
        page = BeautifulSoup(web.get("/executions").text, "html.parser")
        banner = page.select_one("#store-banner")
        assert banner is not None and page.select_one("#broker-banner") is None
        assert "Cannot write the store" in banner.get_text()
        assert "disk I/O error" in banner.get_text()


def _failing(health: dict[str, Any]) -> dict[str, Any] | None:
    return health if (health.get("consumer") or {}).get("failing") else None
