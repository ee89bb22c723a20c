"""Queues: the broker's lengths read without consuming (real Redis, real RabbitMQ, a broker
that is down), kept by the store and the consumer's poller, and the page and the API built
from them and from the tasks in flight."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Producer

from stemtrace.cli.main import main
from stemtrace.ingest.depths import DepthPoller
from stemtrace.server.queues import NOBODY
from stemtrace.settings import SettingError, Settings
from stemtrace.store import Backend, open_store
from stemtrace.transports.depths import (
    NO_SUCH_QUEUE,
    NOT_AMQP_NAME,
    AmqpDepthReader,
    Depth,
    RedisDepthReader,
    open_depth_reader,
    redis_keys,
)
from tests.factories import W1, Task, registry_entry, worker_event
from tests.site import Site, assert_no_active_content, one, page, text
from tests.support import AMQP_URL, PrivateRedis, free_port, redis_url

DB = 7
"""The Redis database these tests' lists live in (each under a key of its own)."""


def online(worker: str, ts: float, queues: list[str], **fields: Any) -> Any:
    return worker_event(
        "worker_online", worker, ts, sw_ver="5.7.0", pool="prefork", concurrency=1,
        queues=queues, freq=2.0, **fields,
    )  # fmt: skip


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


# -- the readers ------------------------------------------------------------------------


@pytest.fixture
def lists(redis_available: None) -> Iterator[tuple[redis.Redis, list[str]]]:
    client = redis.Redis.from_url(redis_url(DB))
    names = [f"q-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    yield client, names
    client.delete(*(key for name in names for key in redis_keys(name)))
    client.close()


def test_redis_counts_every_priority_list_in_one_round_trip_and_consumes_nothing(
    lists: tuple[redis.Redis, list[str]],
) -> None:
    client, (plain, prioritised, missing) = lists
    client.lpush(plain, *[f"m{i}" for i in range(4)])
    sep = "\x06\x16"
    steps = [f"{prioritised}{sep}{n}" for n in (3, 6, 9)]
    assert redis_keys(prioritised) == [prioritised, *steps]
    for key, n in zip(redis_keys(prioritised), (1, 2, 3, 4), strict=True):
        client.lpush(key, *[f"m{i}" for i in range(n)])
    before = [client.llen(k) for name in (plain, prioritised) for k in redis_keys(name)]
    reader = open_depth_reader(redis_url(DB))
    assert isinstance(reader, RedisDepthReader)
    try:
        found = reader.read([plain, prioritised, missing, plain])
        assert reader.round_trips == 1
        assert found == {plain: Depth(messages=4), prioritised: Depth(messages=10),
                         missing: Depth(messages=0)}  # fmt: skip
        assert found[plain].consumers is None  # Redis cannot say who consumes
        assert reader.read([plain]) == {plain: Depth(messages=4)}
        assert reader.round_trips == 2
    finally:
        reader.close()
    after = [client.llen(k) for name in (plain, prioritised) for k in redis_keys(name)]
    assert after == before


def test_redis_key_of_another_type_is_that_queue_s_error_only(
    lists: tuple[redis.Redis, list[str]],
) -> None:
    client, (plain, odd, _) = lists
    client.lpush(plain, "m")
    client.set(odd, "not a list")
    reader = RedisDepthReader(redis_url(DB))
    try:
        found = reader.read([odd, plain])
    finally:
        reader.close()
    assert found[plain] == Depth(messages=1)
    assert found[odd].messages is None and "WRONGTYPE" in (found[odd].error or "")


def test_readers_of_a_closed_port_give_errors_not_exceptions() -> None:
    port = free_port()
    for reader in (RedisDepthReader(f"redis://127.0.0.1:{port}/0"),
                   AmqpDepthReader(f"amqp://guest:guest@127.0.0.1:{port}//")):  # fmt: skip
        started = time.monotonic()
        found = reader.read(["a", "b"])
        assert time.monotonic() - started < 2.5
        assert set(found) == {"a", "b"}
        assert all(d.messages is None and d.error for d in found.values()), found
        reader.close()


def test_no_reader_for_a_broker_it_cannot_read() -> None:
    assert open_depth_reader("sqs://") is None


def test_redis_reader_reads_again_once_its_broker_is_back() -> None:
    private = PrivateRedis()
    private.start()
    reader = RedisDepthReader(private.url)
    try:
        redis.Redis.from_url(private.url).lpush("jobs", "a", "b")
        assert reader.read(["jobs"]) == {"jobs": Depth(messages=2)}
        private.stop()
        assert reader.read(["jobs"])["jobs"].error
        private.start()  # a fresh server: empty
        assert reader.read(["jobs"]) == {"jobs": Depth(messages=0)}
    finally:
        reader.close()
        private.stop()


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    name = f"q-{uuid.uuid4().hex[:10]}"
    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=False, auto_delete=False)
        for i in range(3):
            Producer(channel).publish(f"m{i}", routing_key=name)
    yield name
    with Connection(AMQP_URL) as conn:
        conn.channel().queue_delete(name)


def test_rabbitmq_passive_declare_counts_and_survives_missing_queues(amqp_queue: str) -> None:
    reader = open_depth_reader(AMQP_URL)
    assert isinstance(reader, AmqpDepthReader)
    missing = f"q-missing-{uuid.uuid4().hex[:8]}"
    try:
        found = reader.read([amqp_queue, missing, amqp_queue + "-2", amqp_queue])
        assert found[amqp_queue] == Depth(messages=3, consumers=0)
        assert found[missing] == Depth(error=NO_SUCH_QUEUE)
        assert found[amqp_queue + "-2"] == Depth(error=NO_SUCH_QUEUE)
        # connect, channel, declare, 404, channel, 404: each 404 costs a channel
        assert reader.round_trips == 6
        again = reader.read([amqp_queue])  # the channel closed by the 404 is reopened
        assert again == {amqp_queue: Depth(messages=3, consumers=0)}
        assert reader.round_trips == 8
        assert reader.read([amqp_queue]) == again
        assert reader.round_trips == 9  # one passive declare per queue per poll
        hostile = "q" * 256  # a name a task can give, RabbitMQ cannot hold
        found = reader.read([hostile, amqp_queue])
        assert found == {hostile: Depth(error=NOT_AMQP_NAME), amqp_queue: again[amqp_queue]}
        assert reader.round_trips == 10  # the name is refused before anything is sent
    finally:
        reader.close()
    with Connection(AMQP_URL) as conn:  # nothing consumed, nothing created
        declared = conn.channel().queue_declare(amqp_queue, passive=True)
        assert declared.message_count == 3
        with pytest.raises(Exception, match="NOT_FOUND"):
            conn.channel().queue_declare(missing, passive=True)


def test_rabbitmq_reader_reconnects_after_losing_its_connection(amqp_queue: str) -> None:
    reader = AmqpDepthReader(AMQP_URL)
    try:
        assert reader.read([amqp_queue])[amqp_queue].messages == 3
        reader.connection.connection.sock.close()  # the socket dies under it
        first = reader.read([amqp_queue])[amqp_queue]
        assert first.messages == 3 or first.error  # an error, never an exception
        assert reader.read([amqp_queue])[amqp_queue] == Depth(messages=3, consumers=0)
    finally:
        reader.close()


# -- the store and the poller ------------------------------------------------------------


def test_store_keeps_latest_and_the_largest_of_each_minute(backend: Backend) -> None:
    writer = backend.open_writer()
    t = 1_800_000_000.0  # a minute's start
    writer.record_depths({"a": (5, None, None), "b": (None, None, "down")}, t)
    writer.record_depths({"a": (9, 2, None)}, t + 10)
    writer.record_depths({"a": (3, 2, None)}, t + 20)
    writer.record_depths({"a": (1, 1, None)}, t + 70)
    latest = backend.queue_depths()
    assert latest["a"] == {"messages": 1, "consumers": 1, "error": None, "at": t + 70}
    assert latest["b"] == {"messages": None, "consumers": None, "error": "down", "at": t}
    backlog = backend.queue_backlog(["a", "b"], t - 3600)
    assert backlog == {"a": [(int(t), 9), (int(t) + 60, 1)], "b": []}
    assert backend.queue_backlog(["a"], t + 60) == {"a": [(int(t) + 60, 1)]}
    assert backend.queue_backlog(["a"], t - 3600, 300) == {"a": [(int(t), 9)]}  # a step's largest


def test_old_minutes_are_pruned_with_the_rollups(db_path: Path) -> None:
    from stemtrace.store.schema import Store
    from stemtrace.store.surface import Upkeep

    store = Store(db_path)
    try:
        writer = store.open_writer(Upkeep(minutes_for=3600))
        now = time.time()
        writer.record_depths({"a": (5, None, None)}, now - 7200)
        writer.record_depths({"a": (6, None, None)}, now - 60)
        writer.fold(now)
        assert [n for _, n in store.queue_backlog(["a"], 0)["a"]] == [6]
    finally:
        store.close()


def test_known_queues_come_from_workers_definitions_and_sends(backend: Backend) -> None:
    now = time.time()
    sent = Task("t1", "p.x")
    backend.open_writer().ingest([
        online(W1, now, ["celery", "emails"], tasks=[registry_entry("p.report", queue="reports")]),
        sent.sent(now, queue="bulk"),
    ])  # fmt: skip
    assert backend.known_queues() == ["celery", "emails", "reports", "bulk"]


class FakeReader:
    """Answers from a shared script, one answer per read."""

    def __init__(self, script: list[dict[str, Depth] | Exception]) -> None:
        self.script = script
        self.round_trips = 0
        self.closed = False

    def read(self, queues: Any) -> dict[str, Depth]:
        self.round_trips += 1
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {q: answer.get(q, Depth(messages=0)) for q in queues}

    def close(self) -> None:
        self.closed = True


def test_poller_records_what_it_reads_and_reopens_a_failing_reader(backend: Backend) -> None:
    backend.open_writer().ingest([online(W1, time.time(), ["celery", "emails"])])
    writer = backend.open_writer()
    clock = [100.0]
    opened: list[FakeReader] = []
    script: list[dict[str, Depth] | Exception] = [
        {"celery": Depth(messages=4)},
        {"celery": Depth(error="ConnectionError: refused"), "emails": Depth(error="refused")},
        RuntimeError("a reader's bug"),
        {"emails": Depth(messages=2, consumers=1)},
    ]

    def open_reader() -> FakeReader:
        opened.append(FakeReader(script))
        return opened[-1]

    poller = DepthPoller(backend, open_reader, every=5.0, clock=lambda: clock[0])
    assert poller.maybe_poll(writer) == {"celery": Depth(messages=4), "emails": Depth(messages=0)}
    assert poller.maybe_poll(writer) is None  # not due
    assert backend.queue_depths()["celery"]["messages"] == 4
    clock[0] += 5
    poller.maybe_poll(writer)  # the broker is down: recorded, and the reader dropped
    assert backend.queue_depths()["celery"]["error"] == "ConnectionError: refused"
    assert len(opened) == 1 and opened[0].closed
    clock[0] += 5
    assert poller.maybe_poll(writer) is None  # raised inside: swallowed, logged
    assert len(opened) == 2 and opened[1].closed
    clock[0] += 5
    poller.maybe_poll(writer)
    assert len(opened) == 3 and not opened[2].closed
    assert backend.queue_depths()["emails"] == {
        "messages": 2, "consumers": 1, "error": None, "at": pytest.approx(time.time(), abs=5)
    }  # fmt: skip
    assert poller.polls == 3 and poller.round_trips == 3


def test_the_setting_and_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert Settings().queue_poll_seconds == 5.0
    assert Settings.from_env({"STEMTRACE_QUEUE_POLL_SECONDS": "0"}).queue_poll_seconds == 0
    with pytest.raises(SettingError, match="STEMTRACE_QUEUE_POLL_SECONDS"):
        Settings.from_env({"STEMTRACE_QUEUE_POLL_SECONDS": "-1"})
    with pytest.raises(SystemExit):
        main(["consume", "--queue-poll-seconds", "-2"])
    assert "--queue-poll-seconds" in capsys.readouterr().err


def test_consumer_polls_only_a_broker_with_queues(tmp_path: Path) -> None:
    from stemtrace.ingest.consumer import build_celery_events_consumer, build_consumer

    store = open_store(str(tmp_path / "s.db"))
    try:
        assert build_consumer(Settings(broker=redis_url(DB)), store).poller is not None
        assert build_consumer(Settings(broker=AMQP_URL), store).poller is not None
        off = Settings(broker=redis_url(DB), queue_poll_seconds=0)
        assert build_consumer(off, store).poller is None
        assert build_consumer(Settings(broker="memory://x"), store).poller is None
        events = build_celery_events_consumer(Settings(broker=redis_url(DB)), store)
        assert events is not None and events.poller is None
    finally:
        store.close()


# -- the page and the API ------------------------------------------------------------------


def scene(now: float) -> list[Any]:
    """A consumed queue with a backlog, a queue nobody consumes, scheduled tasks."""
    beat = worker_event("worker_heartbeat", W1, now - 1, freq=2.0, active=1, processed=0)
    events = [online(W1, now - 600, ["celery"]), beat]
    for i in range(3):
        events.append(Task(f"wait-{i}", "p.quick").sent(now - 30 + i))
    evil = Task("orphan", "<script>alert(1)</script>")
    events.append(evil.sent(now - 90, queue="<b>reports</b>"))
    later = Task("later", "p.quick")
    events += [
        later.sent(now - 10, eta=iso(now + 600)),
        later.received(now - 9, W1, eta=iso(now + 600)),
    ]
    late = Task("late", "p.quick")
    events += [
        late.sent(now - 200, eta=iso(now - 120)),
        late.received(now - 199, W1, eta=iso(now - 120)),
    ]
    retry = Task("again", "p.flaky")
    events += [retry.sent(now - 5, retries=1, eta=iso(now + 30))]
    done = Task("done", "p.quick")
    events += [done.sent(now - 40), done.received(now - 39, W1), done.started(now - 39, W1)]
    return events  # fmt: skip


def served(site: Site, db_target: str, now: float) -> Any:
    client = site(scene(now))
    store = open_store(db_target)
    try:
        store.open_writer().record_depths({"celery": (7, None, None)}, now - 2)
    finally:
        store.close()
    return client


def test_api_lists_each_queue_with_broker_and_own_counts(site: Site, db_target: str) -> None:
    now = time.time()
    client = served(site, db_target, now)
    body = client.get("/api/queues").json()
    queues = {q["queue"]: q for q in body["queues"]}
    assert set(queues) == {"celery", "<b>reports</b>"}
    celery = queues["celery"]
    assert celery["broker"]["messages"] == 7 and celery["broker"]["error"] is None
    assert celery["workers"] == [W1] and celery["problem"] is None
    assert celery["waiting"] == 3
    assert celery["oldest"]["id"] == "wait-0"
    assert celery["oldest"]["age"] == pytest.approx(30, abs=5)
    assert celery["in_per_minute"] == pytest.approx(round(7 / 15, 2))  # every send, the retry's too
    assert celery["out_per_minute"] == pytest.approx(round(1 / 15, 2))
    assert celery["backlog"] == [[int((now - 2) // 60) * 60, 7]]
    orphan = queues["<b>reports</b>"]
    assert orphan["problem"] == NOBODY and orphan["broker"] is None and orphan["waiting"] == 1
    assert body["queues"][0]["queue"] == "<b>reports</b>"  # problems first
    assert body["polled_at"] == pytest.approx(now - 2)
    assert body["scheduled_total"] == 3
    listed = [(s["id"], s["state"], s["worker"]) for s in body["scheduled"]]
    assert listed == [("late", "RECEIVED", W1), ("again", "RETRY", None), ("later", "RECEIVED", W1)]
    assert body["scheduled"][0]["due_in"] == pytest.approx(-120, abs=5)
    assert body["scheduled"][2]["due_in"] == pytest.approx(600, abs=5)
    assert client.get("/api/queues", params={"scheduled": 1}).json()["scheduled_total"] == 3
    assert body["backlog_step"] == 60
    longer = client.get("/api/queues", params={"hours": 48}).json()
    assert longer["backlog_step"] == 600  # at most 360 points a queue
    assert len(client.get("/api/queues", params={"scheduled": 1}).json()["scheduled"]) == 1


@pytest.mark.parametrize("query", [{"hours": 0}, {"hours": 49}, {"scheduled": -1},
                                   {"scheduled": 1001}, {"hours": "x"}])  # fmt: skip
def test_api_refuses_bad_parameters(site: Site, query: dict[str, Any]) -> None:
    assert site([]).get("/api/queues", params=query).status_code == 422


def test_page_flags_the_queue_nobody_consumes_and_escapes_task_data(
    site: Site, db_target: str
) -> None:
    now = time.time()
    client = served(site, db_target, now)
    response = client.get("/queues")
    assert "<script>alert(1)" not in response.text and "<b>reports</b>" not in response.text
    soup = page(client, "/queues")
    assert_no_active_content(soup)
    rows = {str(tr["data-queue"]): tr for tr in soup.select("tr.queue")}
    assert set(rows) == {"celery", "<b>reports</b>"}
    assert "problem" in rows["<b>reports</b>"]["class"]
    assert text(one(rows["<b>reports</b>"], "[role=alert]")) == NOBODY
    assert not rows["celery"].select("[role=alert]")
    assert text(one(rows["celery"], ".broker-messages")).startswith("7")
    assert text(one(rows["celery"], ".waiting")) == "3"
    assert one(rows["celery"], ".oldest a.mono")["href"] == "/tasks/wait-0"
    assert len(soup.select("#backlog svg")) == 2
    due = [text(td) for td in soup.select("#scheduled td.due")]
    assert due[0].startswith("overdue by 2") and due[1].startswith("in ")
    assert due[2].startswith("in ")
    assert text(one(soup, "#scheduled-h")) == "Scheduled (3)"


def test_page_live_refresh_renders_only_its_listing(site: Site, db_target: str) -> None:
    client = served(site, db_target, time.time())
    response = client.get("/queues", headers={"HX-Request": "true", "HX-Target": "queues-live"})
    assert response.status_code == 200
    assert "<html" not in response.text and 'id="queue-table"' in response.text


def test_empty_store_says_so(site: Site) -> None:
    soup = page(site([]), "/queues")
    assert one(soup, "#no-queues")
    assert text(one(soup, "#scheduled-h")) == "Scheduled (0)"


def test_a_task_retried_twice_is_due_when_its_latest_retry_says(backend: Backend) -> None:
    now = time.time()
    task = Task("twice", "p.flaky")
    boom = {"exc_type": "ValueError", "exc_message": "boom", "traceback": "ValueError: boom\n"}
    events = [task.sent(now - 100), task.received(now - 99, W1), task.started(now - 98, W1)]
    first, second = now - 60, now + 300
    events += [task.ended("retry", now - 97, W1, retries=0, attempt=1, retry_at=first,
                          runtime=1.0, **boom),
               task.sent(now - 96, W1, retries=1, parent_id="twice", eta=iso(first)),
               task.received(now - 95, W1, retries=1, eta=iso(first)),
               task.started(now - 60, W1, retries=1),
               task.ended("retry", now - 59, W1, retries=1, attempt=2, retry_at=second,
                          runtime=1.0, **boom),
               task.sent(now - 58, W1, retries=2, parent_id="twice", eta=iso(second))]  # fmt: skip
    backend.open_writer().ingest(events)
    total, [row] = backend.scheduled(10)
    assert total == 1 and row["state"] == "RETRY"
    assert row["eta"] == iso(second)  # the row keeps the latest attempt's ETA
    assert row["due"] == pytest.approx(second)


def test_a_flood_of_queue_names_is_capped_busy_ones_first(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stemtrace.ingest import depths as polling
    from stemtrace.server import queues

    now = time.time()
    done = [e for i in range(4) for e in (Task(f"d{i}", "p.x").sent(now - 60, queue=f"a{i}"),
                                          Task(f"d{i}", "p.x").received(now - 59, W1))]  # fmt: skip
    backend.open_writer().ingest([*done, Task("w", "p.x").sent(now - 5, queue="zz-busy")])
    monkeypatch.setattr(queues, "MAX_QUEUES", 2)
    found = queues.build(backend, now, 1, 10)
    assert found["queues_total"] == 5
    assert [q["queue"] for q in found["queues"]] == ["zz-busy", "a0"]
    monkeypatch.setattr(polling, "MAX_QUEUES", 3)
    reader = FakeReader([{}])
    poller = DepthPoller(backend, lambda: reader, every=5.0)
    assert list(poller.maybe_poll(backend.open_writer()) or {}) == ["a0", "a1", "a2"]
