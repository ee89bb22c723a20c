"""Consumers that split the stream: Redis consumer groups and a RabbitMQ queue shared by a
group, against the real brokers (each test its own stream key, group and queue)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kombu.connection import Connection

from stemtrace.cli.main import main
from stemtrace.core.events import decode_frame, encode_frame
from stemtrace.ingest.consumer import Consumer, build_consumer
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store
from stemtrace.transports import open_reader
from stemtrace.transports.amqp import AmqpReader, AmqpSender
from stemtrace.transports.redis import FRAME_FIELD
from stemtrace.transports.redis_group import RedisGroupReader
from tests.factories import started
from tests.support import AMQP_URL, Scenario, stop_process, wait_for


@pytest.fixture
def client(scenario: Scenario) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(scenario.broker)
    yield found
    found.close()


def add_tasks(client: redis.Redis, stream: str, numbers: range, per_frame: int = 1) -> None:
    """One stream entry per ``per_frame`` tasks, each task one ``started`` event."""
    for start in range(numbers.start, numbers.stop, per_frame):
        frame = encode_frame(
            [started(n) for n in range(start, min(start + per_frame, numbers.stop))]
        )
        client.xadd(stream, {FRAME_FIELD: frame})


def group_reader(scenario: Scenario, consumer: str, claim_idle: float = 60.0) -> RedisGroupReader:
    reader = open_reader(scenario.broker, stream=scenario.stream, group="g", consumer=consumer,
                         claim_idle=claim_idle)  # fmt: skip
    assert isinstance(reader, RedisGroupReader)
    return reader


def drain(readers: list[Any], until: int, count: int = 7) -> list[list[str]]:
    """Read with each reader in turn (acking nothing) until ``until`` entries came in all;
    the positions each reader got."""
    got: list[list[str]] = [[] for _ in readers]
    deadline = time.monotonic() + 20
    while sum(map(len, got)) < until and time.monotonic() < deadline:
        for index, reader in enumerate(readers):
            got[index] += [position for position, _frame in reader.read(None, count, 0.05)]
    return got


def pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, "g")["pending"])


def test_two_readers_of_one_group_split_the_entries(
    scenario: Scenario, client: redis.Redis
) -> None:
    add_tasks(client, scenario.stream, range(60))
    first, second = group_reader(scenario, "a"), group_reader(scenario, "b")
    try:
        got = drain([first, second], 60)
        assert all(got), got  # both took a share
        assert set(got[0]).isdisjoint(got[1])
        assert len(got[0] + got[1]) == 60
        assert set(got[0] + got[1]) == {e[0].decode() for e in client.xrange(scenario.stream)}
        assert pending(client, scenario.stream) == 60  # delivered, none acknowledged yet
        assert first.read(None, 100, 0.05) == [] and second.read(None, 100, 0.05) == []
        first.commit(got[0][-1])
        second.commit(got[1][-1])
        assert pending(client, scenario.stream) == 0
    finally:
        first.close()
        second.close()


def test_a_dead_readers_entries_are_claimed_after_the_idle_timeout(
    scenario: Scenario, client: redis.Redis
) -> None:
    add_tasks(client, scenario.stream, range(10))
    dying = group_reader(scenario, "dying", claim_idle=0.5)
    taken = [position for position, _frame in dying.read(None, 100, 0.05)]
    dying.close()  # dies before its batch is committed: nothing acknowledged
    assert len(taken) == 10
    survivor = group_reader(scenario, "survivor", claim_idle=0.5)
    try:
        assert survivor.read(None, 100, 0.05) == []  # not idle long enough yet
        time.sleep(0.6)
        claimed = wait_for(lambda: survivor.read(None, 100, 0.05), timeout=5)
        assert [position for position, _frame in claimed] == taken
        assert survivor.group_status()["claimed"] == 10
        survivor.commit(claimed[-1][0])
        assert pending(client, scenario.stream) == 0
    finally:
        survivor.close()


def test_a_reader_restarted_under_its_name_takes_back_its_own_entries_first(
    scenario: Scenario, client: redis.Redis
) -> None:
    add_tasks(client, scenario.stream, range(5))
    before = group_reader(scenario, "same")
    taken = before.read(None, 3, 0.05)
    before.close()
    add_tasks(client, scenario.stream, range(5, 8))
    after = group_reader(scenario, "same")
    try:
        assert after.read(None, 100, 0.05) == taken  # not claimed: it is its own again
        after.commit(taken[-1][0])
        assert len(after.read(None, 100, 0.05)) == 5  # then the rest of the stream
    finally:
        after.close()


def group_settings(scenario: Scenario, db: Path, name: str, **extra: Any) -> Settings:
    return Settings(broker=scenario.broker, stream=scenario.stream, db=str(db), group="g",
                    consumer_name=name, celery_events=False, retention_days=0,
                    queue_poll_seconds=0, **extra)  # fmt: skip


def task_ids(store: Store) -> set[str]:
    return {row[0] for row in store.reader().conn.execute("SELECT id FROM tasks")}


def test_two_consumers_in_one_group_store_every_entry_exactly_once(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    stores = [Store(tmp_path / "a.db"), Store(tmp_path / "b.db")]
    consumers: list[Consumer] = []
    for store, name in zip(stores, ("a", "b"), strict=True):
        consumer = build_consumer(group_settings(scenario, store.path, name), store)
        consumer.block, consumer.batch_frames = 0.05, 3
        consumers.append(consumer)
    try:
        for consumer in consumers:
            consumer.start()
        for first in range(0, 400, 40):  # in waves, so that both are waiting for some
            add_tasks(client, scenario.stream, range(first, first + 40), per_frame=4)
            time.sleep(0.05)
        sent = {f"task-{n:04}" for n in range(400)}
        wait_for(lambda: len(task_ids(stores[0]) | task_ids(stores[1])) == 400)
        wait_for(lambda: pending(client, scenario.stream) == 0)
        held = [task_ids(store) for store in stores]
        assert held[0] | held[1] == sent
        assert not held[0] & held[1]
        assert all(held), [len(h) for h in held]
        status = consumers[0].status.as_dict()["group"]
        assert status["name"] == "g" and status["consumer"] == "a"
        assert status["pending"] is not None
    finally:
        for consumer in consumers:
            consumer.stop()
        for store in stores:
            store.close()


def test_the_group_and_its_consumer_are_in_api_health(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    add_tasks(client, scenario.stream, range(3))
    settings = group_settings(scenario, tmp_path / "h.db", "web-1")
    with TestClient(create_app(settings)) as web:
        health = wait_for(lambda: _with_group(web.get("/api/health").json()))
    group = health["consumer"]["group"]
    assert (group["name"], group["consumer"], group["pending"]) == ("g", "web-1", 0)
    assert health["consumer"]["source"].endswith("@group:g")


def _with_group(health: dict[str, Any]) -> dict[str, Any] | None:
    consumer = health.get("consumer") or {}
    ready = consumer.get("group") and consumer.get("ingested") == 3
    return health if ready and consumer["group"].get("pending") == 0 else None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--consumers", "2", "--group", "g"], "argument --consumers: above 1 needs a PostgreSQL"),
        (["--consumers", "2"], "argument --consumers: above 1 needs --group"),
        (["--consumers", "0", "--group", "g"], "argument --consumers: must be between 1 and 64"),
        (["--claim-idle-seconds", "0"], "argument --claim-idle-seconds: must be between 0.1"),
        (["--claim-idle-seconds", "-5", "--group", "g"], "argument --claim-idle-seconds:"),
        (["--group", " "], "argument --group: must not be empty"),
    ],
)
def test_bad_group_options_are_refused_naming_the_flag(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["consume", "--db", str(tmp_path / "one.db"), *args])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "one.db").exists()


def test_a_bad_claim_idle_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEMTRACE_CLAIM_IDLE_SECONDS", "0")
    with pytest.raises(SystemExit):
        main(["consume"])
    assert "STEMTRACE_CLAIM_IDLE_SECONDS must be between 0.1" in capsys.readouterr().err


def test_one_consumer_in_group_mode_on_sqlite_is_allowed(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "x.db"), group="g", consumers=1)
    assert settings.consumer_id  # host and pid
    assert settings.queue_name == "stemtrace:events.group.g"


def test_a_killed_consumer_process_loses_nothing(
    scenario: Scenario, client: redis.Redis, tmp_path: Path
) -> None:
    """Two ``stemtrace consume --group`` processes; one is killed -9 mid-stream: the other
    claims what it held, and the two stores together hold every task."""
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    processes = [_consume(scenario, db, name) for db, name in zip(dbs, ("a", "b"), strict=True)]
    try:
        wait_for(lambda: _members(client, scenario.stream) == 2, timeout=30)
        first = 0
        while not (_stored(dbs[0]) and _stored(dbs[1])):  # both at work, mid-stream
            assert first < 300, "one consumer took every entry"
            add_tasks(client, scenario.stream, range(first, first + 6), per_frame=3)
            first += 6
            time.sleep(0.02)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(10)
        add_tasks(client, scenario.stream, range(first, 600), per_frame=3)
        sent = {f"task-{n:04}" for n in range(600)}
        wait_for(lambda: _ids(dbs[0]) | _ids(dbs[1]) == sent, timeout=30)
        wait_for(lambda: pending(client, scenario.stream) == 0)
        held = [_ids(db) for db in dbs]
        # A batch stored but not acknowledged when the process died is stored again by
        # the other: no more than that one batch in both stores.
        assert len(held[0] & held[1]) <= 300
    finally:
        for process in processes:
            stop_process(process)


def _consume(scenario: Scenario, db: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "consume", "--broker", scenario.broker,
         "--stream", scenario.stream, "--db", str(db), "--group", "g", "--consumer-name", name,
         "--claim-idle-seconds", "0.5", "--no-celery-events", "--queue-poll-seconds", "0",
         "--retention-days", "0", "--log-level", "warning"],
    )  # fmt: skip


def _ids(db: Path) -> set[str]:
    """The tasks a consumer process has stored so far (read-only: it may be migrating)."""
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}
    except sqlite3.OperationalError:  # no tasks table yet
        return set()
    finally:
        conn.close()


def _members(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xinfo_groups(stream)[0]["consumers"])
    except (redis.ResponseError, IndexError):
        return 0


def _stored(db: Path) -> int:
    return len(_ids(db))


# -- RabbitMQ: one durable queue the group's consumers share ------------------


@pytest.fixture
def shared_queue() -> Iterator[tuple[str, str]]:
    stream = f"stemtrace-test:{uuid.uuid4().hex[:12]}"
    settings = Settings(broker=AMQP_URL, stream=stream, group="g")
    yield stream, settings.queue_name
    connection = Connection(AMQP_URL, connect_timeout=3)
    try:
        channel = connection.channel()
        channel.queue_delete(settings.queue_name)
        channel.exchange_delete(stream)
    finally:
        connection.release()


def test_two_amqp_readers_of_one_group_share_its_queue(shared_queue: tuple[str, str]) -> None:
    stream, queue = shared_queue
    readers = [AmqpReader(AMQP_URL, stream=stream, queue=queue, group="g", consumer=name)
               for name in ("a", "b")]  # fmt: skip
    sender = AmqpSender(AMQP_URL, stream=stream, maxlen=0)
    try:
        for reader in readers:
            reader.consumer.qos(prefetch_count=5)  # so that one cannot take them all
        sender.send([encode_frame([started(n)]) for n in range(40)])
        got: list[list[tuple[str, bytes]]] = [[], []]
        deadline = time.monotonic() + 20
        while sum(map(len, got)) < 40 and time.monotonic() < deadline:
            for index, reader in enumerate(readers):
                found = reader.read(None, 5, 0.05)
                if found:
                    got[index] += found
                    reader.commit(found[-1][0])
        tasks = [{_task(frame) for _tag, frame in share} for share in got]
        assert tasks[0] | tasks[1] == {f"task-{n:04}" for n in range(40)}
        assert not tasks[0] & tasks[1]
        assert all(tasks)
        assert readers[0].group_status() == {"name": "g", "consumer": "a", "queue": queue}
    finally:
        sender.close()
        for reader in readers:
            reader.close()


def test_an_amqp_reader_that_dies_unacked_leaves_its_messages_to_the_other(
    shared_queue: tuple[str, str],
) -> None:
    stream, queue = shared_queue
    dying = AmqpReader(AMQP_URL, stream=stream, queue=queue, group="g")
    sender = AmqpSender(AMQP_URL, stream=stream, maxlen=0)
    survivor = None
    try:
        sender.send([encode_frame([started(n)]) for n in range(10)])
        taken = wait_for(lambda: dying.read(None, 100, 0.1))
        dying.close()  # nothing acknowledged
        survivor = AmqpReader(AMQP_URL, stream=stream, queue=queue, group="g")
        again: list[tuple[str, bytes]] = []
        wait_for(lambda: again.extend(survivor.read(None, 100, 0.1)) or len(again) >= len(taken))
        assert {_task(f) for _t, f in again} == {_task(f) for _t, f in taken}
    finally:
        sender.close()
        if survivor is not None:
            survivor.close()


def _task(frame: bytes) -> str:
    return str(decode_frame(frame).events[0]["task_id"])
