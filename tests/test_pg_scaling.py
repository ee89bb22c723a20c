"""PostgreSQL as the shared store, end to end (issue 18): stemtrace's own processes
(``stemtrace consume``, ``stemtrace run``) on the real PostgreSQL, Redis and RabbitMQ,
fed by a real Celery worker with ``stemtrace.init(app)``.

* two consumers on one Redis group write one database: every task stored once, with
  its whole timeline, also when one is killed -9 mid-stream (the other claims what it
  held); the same on RabbitMQ's shared queue;
* a private PostgreSQL cluster restarted and stopped mid-stream: the consumers resume,
  nothing is lost, and meanwhile a server says the store is unavailable (503), never 500;
* two servers started at once on an empty database: one migrates, both serve, and a
  server without a consumer pushes live updates that a consumer process wrote;
* retention through ``--retention-days`` and ``--max-tasks`` drops old days and keeps
  what is served right.

One worker serves the module; each test reads it through a consumer group of its own,
created at the stream's end, and writes a database of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from bs4 import BeautifulSoup
from celery import Celery, chain, chord, group
from kombu.connection import Connection
from psycopg import sql

import stemtrace
from stemtrace.core.events import Event, decode_frame, encode_frame
from stemtrace.server import watch
from stemtrace.settings import Settings
from stemtrace.store.pg import PgStore
from stemtrace.store.pg.schema import MIGRATIONS
from stemtrace.transports.amqp import AmqpSender
from stemtrace.transports.redis import FRAME_FIELD
from tests.factories import task_event
from tests.proj import make_app
from tests.support import (
    AMQP_URL,
    ROOT,
    Scenario,
    celery_worker,
    free_port,
    private_db,
    stop_process,
    wait_for,
)

GROUP_IDLE = "3"
"""``--claim-idle-seconds`` of the consumers: a dead one's entries are claimed after it.
Not less: a live consumer stalled that long on a loaded machine would have its batch
claimed and stored twice, which the kill test counts as doubled by the kill."""

# -- processes: consumers, servers, each with its log ---------------------------------


@dataclass
class Proc:
    """A stemtrace process of this test, its output in ``log``."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def stemtrace_process(log: Path, *args: str) -> Proc:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stemtrace.cli", *args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Proc(process, log)


def consumer(tmp_path: Path, db: str, broker: str, stream: str, name: str, *extra: str) -> Proc:
    return stemtrace_process(
        tmp_path / f"consume-{name}.log", "consume", "--broker", broker, "--stream", stream,
        "--db", db, "--consumer-name", name, "--claim-idle-seconds", GROUP_IDLE,
        "--no-celery-events", "--queue-poll-seconds", "0", "--retention-days", "0",
        "--log-level", "warning", *extra,
    )  # fmt: skip


@dataclass
class Server:
    """``stemtrace run`` as a real uvicorn process on a free port."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30)

    def ready(self) -> bool:
        if self.proc.process.poll() is not None:
            raise AssertionError(f"server exited: {self.proc.text()[-3000:]}")
        try:
            return self.get("/api/health").status_code == 200
        except httpx.HTTPError:
            return False


def server(tmp_path: Path, db: str, *args: str, name: str = "web") -> Server:
    port = free_port()
    proc = stemtrace_process(
        tmp_path / f"{name}.log", "run", "--db", db, "--port", str(port), *args
    )
    return Server(proc, port)


HTML = {"Accept": "text/html,application/xhtml+xml"}


class LiveStream:
    """The SSE messages of one ``/live`` connection, read on a thread as they come (a
    plain socket: the test can hang up at any moment, which a blocked client cannot)."""

    def __init__(self, server: Server, path: str = "/live") -> None:
        self.events: list[tuple[float, str]] = []
        self.ended: str | None = None
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        self._sock.sendall(request.encode())
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        text = ""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self.ended = f"{type(exc).__name__}: {exc}"
                return
            if not data:
                self.ended = "the server ended the stream"
                return
            text += data.decode(errors="replace")
            *lines, text = text.split("\n")
            self.events += [(time.monotonic(), line[6:].strip())
                            for line in lines if line.startswith("event:")]  # fmt: skip

    def names(self, after: float = 0.0) -> list[str]:
        return [name for at, name in self.events if at > after]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


# -- the module's worker and its stream -----------------------------------------------


@dataclass
class Work:
    """A sender with ``init(app)``, a real worker, both writing one Redis stream."""

    scenario: Scenario
    app: Celery
    client: redis.Redis

    @property
    def stream(self) -> str:
        return self.scenario.stream

    def group_from_now(self) -> str:
        """A new consumer group on the stream, from its end: it sees this test's work only."""
        name = f"g-{uuid.uuid4().hex[:8]}"
        self.client.xgroup_create(self.stream, name, id="$", mkstream=True)
        return name

    def last_id(self) -> str:
        last = self.client.xrevrange(self.stream, count=1)
        return last[0][0].decode() if last else "0-0"

    def frames(self, after: str) -> list[tuple[str, bytes]]:
        """The stream's entries after ``after``."""
        return [
            (entry_id.decode(), fields[FRAME_FIELD])
            for entry_id, fields in self.client.xrange(self.stream, f"({after}", "+")
        ]

    def events_by_task(self, after: str = "0-0") -> dict[str, list[Event]]:
        found: dict[str, list[Event]] = {}
        for _entry_id, frame in self.frames(after):
            for event in decode_frame(frame).events:
                if "task_id" in event:
                    found.setdefault(event["task_id"], []).append(event)
        return found

    def pending(self, group: str, consumer: str | None = None) -> list[str]:
        entries = self.client.xpending_range(
            self.stream, group, "-", "+", 100_000, consumername=consumer
        )
        return [entry["message_id"].decode() for entry in entries]

    def delivered(self, group: str) -> tuple[int, int]:
        """The last entry the group handed out."""
        mine = next(g for g in self.client.xinfo_groups(self.stream) if g["name"] == group.encode())
        return _id(mine["last-delivered-id"].decode())

    def members(self, group: str) -> int:
        return len(self.client.xinfo_consumers(self.stream, group))


def _id(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


@pytest.fixture(scope="module")
def work(redis_available: None) -> Iterator[Work]:
    scenario = Scenario(db=private_db(__name__))
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    client = redis.Redis.from_url(scenario.broker)
    try:
        with celery_worker(scenario, concurrency=2):
            yield Work(scenario, app, client)
    finally:
        capture.publisher.close(1)
        app.close()
        scenario.cleanup()
        client.close()


# -- what a workload sent, and what the store must hold of it -------------------------


@dataclass
class Sent:
    """The ids a test sent, each with the state it must end in and its events' kinds."""

    expected: dict[str, tuple[str, Counter[str]]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    results: list[Any] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    """Chain links after a failure: never sent, known from the plan only."""

    def add(self, task_id: str, name: str, state: str, **kinds: int) -> None:
        self.expected[task_id] = (state, Counter(kinds))
        self.names[task_id] = name

    def outcomes(self) -> dict[str, dict[str, int]]:
        """Per task name, how many tasks succeeded and failed."""
        found: dict[str, dict[str, int]] = {}
        for task_id, (state, _kinds) in self.expected.items():
            counted = found.setdefault(self.names[task_id], {"succeeded": 0, "failed": 0})
            counted["succeeded" if state == "SUCCESS" else "failed"] += 1
        return found


RUN_ONCE = {"sent": 1, "received": 1, "started": 1}


def send_adds(work: Work, sent: Sent, count: int, start: int = 0) -> None:
    add = work.app.tasks["proj.add"]
    for n in range(start, start + count):
        result = add.delay(n, n)
        sent.results.append(result)
        sent.add(result.id, "proj.add", "SUCCESS", **RUN_ONCE, succeeded=1)


def send_canvas(work: Work, sent: Sent) -> None:
    """A retried task, a chain broken in the middle, a group and a chord."""
    tasks = work.app.tasks
    add, fail, tsum = tasks["proj.add"], tasks["proj.fail"], tasks["proj.tsum"]
    flaky = tasks["proj.flaky"].delay(7)  # two retries, then success: three attempts
    sent.results.append(flaky)
    sent.add(flaky.id, "proj.flaky", "SUCCESS", sent=3, received=3, started=3, retry=2, succeeded=1)
    broken = chain(add.s(1, 1), fail.s(), add.s(5), add.s(6)).apply_async()
    first, failing = broken.parent.parent.parent, broken.parent.parent
    sent.results.append(failing)
    sent.add(first.id, "proj.add", "SUCCESS", **RUN_ONCE, succeeded=1)
    sent.add(failing.id, "proj.fail", "FAILURE", **RUN_ONCE, failed=1)
    sent.not_run += [broken.parent.id, broken.id]
    members = group(add.s(i, i) for i in range(4)).apply_async()
    for member in members.results:
        sent.results.append(member)
        sent.add(member.id, "proj.add", "SUCCESS", **RUN_ONCE, succeeded=1)
    fanned = chord([add.s(i, 1) for i in range(3)], tsum.s()).apply_async()
    sent.results.append(fanned)
    sent.add(fanned.id, "proj.tsum", "SUCCESS", **RUN_ONCE, succeeded=1)
    for member in fanned.parent.results:
        sent.add(member.id, "proj.add", "SUCCESS", **RUN_ONCE, succeeded=1)


def settle(sent: Sent) -> None:
    """Every result in (the broken chain's failure included)."""
    for result in sent.results:
        result.get(timeout=60, propagate=False)


def differences(store: PgStore, sent: Sent, events: dict[str, list[Event]]) -> list[str]:
    """How what ``store`` holds differs from what was sent, task by task: the state, the
    kinds of events in its timeline, each event once and every one the stream holds."""
    found = []
    with store.connection() as conn:
        rows = conn.execute("SELECT id, count(*) FROM tasks GROUP BY id ORDER BY id").fetchall()
    stored = dict(rows)
    if set(stored) != set(sent.expected):
        missing = set(sent.expected) - set(stored)
        extra = set(stored) - set(sent.expected)
        found.append(f"{len(missing)} tasks missing, {len(extra)} not sent")
    found += [f"{task_id} stored {n} times" for task_id, n in stored.items() if n != 1]
    for task_id, (state, kinds) in sent.expected.items():
        task = store.get_task(task_id)
        if task is None:
            continue
        timeline = store.task_events(task_id)
        eids = [e["eid"] for e in timeline]
        if task["state"] != state:
            found.append(f"{task_id} {task['state']} instead of {state}")
        if Counter(e["kind"] for e in timeline) != kinds:
            found.append(f"{task_id} kinds {Counter(e['kind'] for e in timeline)} not {kinds}")
        if len(eids) != len(set(eids)):
            found.append(f"{task_id}: an event twice in its timeline")
        if set(eids) != {e["eid"] for e in events.get(task_id, [])}:
            found.append(f"{task_id}: its timeline is not the stream's events")
    return found


def stored_right(work: Work, db: str, sent: Sent, timeout: float = 40) -> None:
    """Wait until the store holds exactly what was sent; fail with what differs."""
    store = PgStore(db)
    try:
        last: list[str] = []

        def done() -> bool:
            last[:] = differences(store, sent, work.events_by_task())
            return not last

        try:
            wait_for(done, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"the store differs from what was sent: {last[:20]}") from None
    finally:
        store.close()


def history_records(db: str) -> Counter[str]:
    """How many times each event is written in the history rows, doubles included."""
    counted: Counter[str] = Counter()
    with psycopg.connect(db) as conn:
        for (records,) in conn.execute("SELECT events FROM history"):
            rows = json.loads(records) if isinstance(records, str) else records
            counted.update(str(record[0]) for record in rows)
    return counted


def freeze_while_holding(proc: Proc, work: Work, group: str, name: str) -> list[str]:
    """Stop ``proc`` (SIGSTOP); the entries it holds unacknowledged, or none and it goes on."""
    proc.process.send_signal(signal.SIGSTOP)
    held = work.pending(group, name)
    if not held:
        proc.process.send_signal(signal.SIGCONT)
    return held


def no_traceback(*procs: Proc) -> None:
    for proc in procs:
        assert "Traceback" not in proc.text(), proc.text()[-5000:]


# -- 1. two consumers of one group, one database --------------------------------------


def test_two_consumers_store_a_worker_s_tasks_once_and_survive_a_kill(
    work: Work, pg_url: str, tmp_path: Path
) -> None:
    group_name = work.group_from_now()
    start = work.last_id()
    group = ("--group", group_name)
    procs = [consumer(tmp_path, pg_url, work.scenario.broker, work.stream, name, *group)
             for name in ("a", "b")]  # fmt: skip
    try:
        wait_for(lambda: work.members(group_name) == 2, timeout=30)
        sent = Sent()
        send_canvas(work, sent)
        send_adds(work, sent, 60)
        settle(sent)
        stored_right(work, pg_url, sent)
        first_frames = [frame for _id, frame in work.frames(start)]

        # Mid-stream: freeze "a" at a moment it holds entries, then kill it.
        held: list[str] = []
        bursts = 0
        while not held:
            assert bursts < 150, "consumer a never held an entry to kill it with"
            send_adds(work, sent, 5, start=1000 + 5 * bursts)
            bursts += 1
            if bursts > 3:
                held = freeze_while_holding(procs[0], work, group_name, "a")
            time.sleep(0.01)
        held_eids = {
            event["eid"]
            for entry_id in held
            for _, fields in work.client.xrange(work.stream, entry_id, entry_id)
            for event in decode_frame(fields[FRAME_FIELD]).events
        }
        procs[0].process.send_signal(signal.SIGKILL)
        procs[0].process.wait(10)
        send_adds(work, sent, 100, start=5000)
        settle(sent)
        stored_right(work, pg_url, sent)
        wait_for(lambda: not work.pending(group_name), timeout=20)
        assert not work.pending(group_name, "a")  # claimed by b (XAUTOCLAIM), then acked

        # The first part of the workload delivered a second time, as after a crash between
        # a commit and its XACK: it changes nothing served.
        for frame in first_frames:
            last = work.client.xadd(work.stream, {FRAME_FIELD: frame}).decode()
        wait_for(lambda: work.delivered(group_name) >= _id(last) and not work.pending(group_name))
        stored_right(work, pg_url, sent)
        replayed = {e["eid"] for f in first_frames for e in decode_frame(f).events}

        # What "a" held may be stored twice (if it committed before the kill, b stored it
        # again), and what came twice: those history records only, never twice in a
        # timeline (checked above).
        doubled = {eid for eid, n in history_records(pg_url).items() if n > 1}
        assert doubled <= held_eids | replayed, sorted(doubled - held_eids - replayed)[:10]
        # The rollups count each task once, though its events came twice.
        store = PgStore(pg_url)
        try:
            since = store.since_ever("name")
            by_state = store.tasks_by_state()
        finally:
            store.close()
        for name, counted in sent.outcomes().items():
            assert {k: since[name][k] for k in counted} == counted, name
            assert by_state[name] == {
                state: n
                for state, n in (("SUCCESS", counted["succeeded"]), ("FAILURE", counted["failed"]))
                if n
            }
        no_traceback(procs[1])
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGCONT)
            proc.stop()


@pytest.fixture
def shared_queue(work: Work) -> Iterator[tuple[str, str]]:
    """An exchange and the group's durable queue on the machine's RabbitMQ, deleted after."""
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


@pytest.mark.rabbitmq
def test_two_consumers_of_a_rabbitmq_queue_lose_nothing_when_one_is_killed(
    work: Work, pg_url: str, tmp_path: Path, shared_queue: tuple[str, str]
) -> None:
    """The worker's frames, sent again to RabbitMQ: one durable queue, two competing
    consumers acking after commit; one killed -9 mid-stream, its unacked frames go to
    the other."""
    start = work.last_id()
    sent = Sent()
    send_canvas(work, sent)
    send_adds(work, sent, 120)
    settle(sent)
    wait_for(lambda: _all_in_stream(work, start, sent), timeout=20)
    frames = [frame for _id, frame in work.frames(start)]
    stream, queue = shared_queue
    group = ("--group", "g")
    procs = [consumer(tmp_path, pg_url, AMQP_URL, stream, name, *group) for name in ("a", "b")]
    sender = AmqpSender(AMQP_URL, stream=stream, maxlen=0)
    try:
        wait_for(lambda: _consumers_of(queue) == 2, timeout=30)
        half = len(frames) // 2
        for at in range(0, half, 10):
            sender.send(frames[at : at + 10])
        procs[0].process.send_signal(signal.SIGSTOP)  # holding its prefetched frames
        sender.send(frames[half:])
        procs[0].process.send_signal(signal.SIGKILL)
        procs[0].process.wait(10)
        stored_right(work, pg_url, sent)
        no_traceback(procs[1])
    finally:
        sender.close()
        for proc in procs:
            proc.stop()


def _all_in_stream(work: Work, start: str, sent: Sent) -> bool:
    events = work.events_by_task(start)
    return all(
        Counter(e["kind"] for e in events.get(task_id, [])) == kinds
        for task_id, (_state, kinds) in sent.expected.items()
    )


def _consumers_of(queue: str) -> int:
    connection = Connection(AMQP_URL, connect_timeout=3)
    try:
        _name, _messages, consumers = connection.channel().queue_declare(queue, passive=True)
        return int(consumers)
    except Exception:
        return 0
    finally:
        connection.release()


# -- 2. PostgreSQL restarted and stopped mid-stream -----------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (never the shared server on 5432), in a
    temporary directory, on a free port, which the test may restart and stop.

    As root, its commands run as the ``postgres`` user (initdb refuses root); the test
    command (scripts/test) installs PostgreSQL, which makes that user.
    """

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parent.parent.name))  # fmt: skip
        if not found:
            pytest.fail("no PostgreSQL binaries in /usr/lib/postgresql: run scripts/test")
        self.bin = found[-1].parent
        self.base = Path(tempfile.mkdtemp(prefix="stemtrace-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_postgres, str(self.bin / tool), *args],
                              capture_output=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, (tool, done.stdout[-2000:], done.stderr[-2000:])

    def _ctl(self, action: str, *args: str) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off"
                   f" -c unix_socket_directories={self.base}")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
                  "-t", "30", "-o", options, action, *args)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60, check=False)  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.mark.postgres  # a cluster of its own, not the shared server
def test_consumers_resume_after_postgresql_restarts_and_pages_say_it_is_unavailable(
    work: Work, private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    db = private_pg.create_database("stemtrace")
    group_name = work.group_from_now()
    group = ("--group", group_name)
    procs = [consumer(tmp_path, db, work.scenario.broker, work.stream, name, *group)
             for name in ("a", "b")]  # fmt: skip
    web = server(tmp_path, db, "--no-consumer")
    live = None
    try:
        wait_for(web.ready, timeout=30)
        wait_for(lambda: work.members(group_name) == 2, timeout=30)
        live = LiveStream(web)
        wait_for(lambda: "ready" in live.names(), timeout=10)
        sent = Sent()
        send_canvas(work, sent)
        send_adds(work, sent, 30)

        private_pg.restart()  # mid-stream: every connection is cut at once
        send_adds(work, sent, 30, start=100)
        settle(sent)
        stored_right(work, db, sent)

        private_pg.stop()
        send_adds(work, sent, 30, start=200)  # the worker runs them; nothing can be stored
        # The problems looked at just before the stop may be served for the Watch's TTL (a
        # page answered from them is right): past it, every page must read the store.
        time.sleep(watch.TTL + 0.5)
        task_id = sent.results[-1].id
        pages = ("/", "/executions", "/problems", f"/tasks/{task_id}")
        api = ("/api/tasks", "/api/problems", f"/api/tasks/{task_id}")
        with ThreadPoolExecutor(8) as pool:  # each waits up to a second for a connection
            answers = dict(zip((*pages, *api, "/api/health"), pool.map(
                lambda path: web.get(path, **(HTML if path in pages else {})),
                (*pages, *api, "/api/health"),
            ), strict=True))  # fmt: skip
        for path in pages:
            page = answers[path]
            assert page.status_code == 503, (path, page.text[:500])
            assert page.headers["content-type"].startswith("text/html")
            heading = BeautifulSoup(page.text, "html.parser").h1
            assert heading is not None and heading.get_text() == "The store is unavailable"
            assert page.headers["retry-after"]
        for path in api:
            answer = answers[path]
            assert answer.status_code == 503, (path, answer.text[:500])
            assert answer.json()["detail"].startswith("the store is unavailable: ")
        health = answers["/api/health"]
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert health.json()["store"]["error"]
        assert live.ended is None, live.ended  # the live stream stays open meanwhile
        down_since = time.monotonic()
        time.sleep(0.5)  # the consumers fail their batches meanwhile

        private_pg.start()
        # the consumers failed their batches meanwhile, said so, and kept the entries
        assert any("cannot write" in proc.text() for proc in procs), procs[0].text()[-3000:]
        settle(sent)
        stored_right(work, db, sent)
        wait_for(lambda: web.get("/api/health").status_code == 200, timeout=20)
        assert web.get("/api/health").json()["status"] == "ok"
        for path in ("/", "/executions", "/problems", f"/tasks/{task_id}", f"/flows/{task_id}"):
            assert web.get(path, **HTML).status_code == 200, path
        for planned in sent.not_run:  # known from the broken chain's plan only
            assert web.get(f"/api/tasks/{planned}").json()["state"] == "NOT_RUN"
        # The live stream heard the server again and told the page to refresh.
        wait_for(lambda: "changed" in live.names(after=down_since), timeout=15)
        assert live.ended is None, live.ended
        no_traceback(web.proc, *procs)
    finally:
        if live is not None:
            live.close()
        for proc in (*procs, web.proc):
            proc.stop()


# -- 3 and 4. two servers at once on an empty database; live updates from a consumer --


def test_two_servers_started_at_once_migrate_once_and_push_another_process_s_writes(
    work: Work, pg_url: str, tmp_path: Path
) -> None:
    servers = [server(tmp_path, pg_url, "--no-consumer", "--log-level", "info", name=name)
               for name in ("web-1", "web-2")]  # fmt: skip
    writer = None
    streams: list[LiveStream] = []
    try:
        for web in servers:
            wait_for(web.ready, timeout=30)
            for path in ("/", "/executions", "/problems", "/workers", "/registry"):
                assert web.get(path, **HTML).status_code == 200, path
        with psycopg.connect(pg_url) as conn:
            applied = conn.execute(
                "SELECT name, count(*) FROM stemtrace_migrations GROUP BY name"
            ).fetchall()
        assert sorted(applied) == sorted((name, 1) for name, _steps in MIGRATIONS)
        # One applied every migration; the other waited for its lock, then found none left.
        said = [[name for name, _ in MIGRATIONS if f"PostgreSQL migration {name}\n" in s]
                for s in (web.proc.text() for web in servers)]  # fmt: skip
        assert sorted(map(len, said)) == [0, len(MIGRATIONS)], said

        # A consumer process writes; neither server runs one, both push the change.
        streams = [LiveStream(web) for web in servers]
        for stream in streams:
            wait_for(lambda s=stream: "ready" in s.names(), timeout=10)
        opened = time.monotonic()
        own_stream = f"stemtrace-test:{uuid.uuid4().hex[:12]}"
        writer = consumer(tmp_path, pg_url, work.scenario.broker, own_stream, "writer")
        frame = encode_frame([task_event("started", "written-elsewhere", time.time(),
                                         name="proj.add", retries=0)])  # fmt: skip
        work.client.xadd(own_stream, {FRAME_FIELD: frame})
        for stream in streams:
            wait_for(lambda s=stream: "changed" in s.names(after=opened), timeout=20)
        for web in servers:
            task = web.get("/api/tasks/written-elsewhere")
            assert task.status_code == 200 and task.json()["state"] == "STARTED"
        work.client.delete(own_stream)
        no_traceback(writer, *(web.proc for web in servers))
    finally:
        for stream in streams:
            stream.close()
        for proc in [*(web.proc for web in servers), *([writer] if writer else [])]:
            proc.stop()


# -- 5. retention ---------------------------------------------------------------------

DAY = 86400.0


def test_retention_drops_old_days_and_the_oldest_tasks_and_serves_the_rest(
    work: Work, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks written 10 and 9 days ago (the store's clock set back while they are
    written), then a server keeping 3 days and 6 tasks reads 10 new ones."""
    now = time.time()
    store = PgStore(pg_url)
    try:
        for age in (10, 9):
            then = now - age * DAY
            monkeypatch.setattr(time, "time", lambda then=then: then)
            store.open_writer().ingest(_lifecycle(f"old-{age}", then))
        monkeypatch.undo()
        with store.connection() as conn:
            assert _history_days_before(conn, now - 3 * DAY) >= 2
    finally:
        store.close()
    own_stream = f"stemtrace-test:{uuid.uuid4().hex[:12]}"
    for n in range(10):
        frame = encode_frame(_lifecycle(f"new-{n}", now - 100 + 5 * n))
        work.client.xadd(own_stream, {FRAME_FIELD: frame})
    web = server(
        tmp_path, pg_url, "--broker", work.scenario.broker, "--stream", own_stream,
        "--retention-days", "3", "--max-tasks", "6", "--no-celery-events",
        "--queue-poll-seconds", "0", "--log-level", "warning",
    )  # fmt: skip
    kept = [f"new-{n}" for n in range(9, 3, -1)]  # the newest six, newest first
    try:
        wait_for(web.ready, timeout=30)
        wait_for(lambda: _listed(web) == kept, timeout=20)
        for task_id in kept:
            task = web.get(f"/api/tasks/{task_id}").json()
            assert task["state"] == "SUCCESS" and task["name"] == "proj.tidy"
            assert [e["kind"] for e in task["events"]] == ["sent", "started", "succeeded"]
            assert web.get(f"/tasks/{task_id}", **HTML).status_code == 200
        for task_id in ("old-10", "old-9", "new-0", "new-3"):
            assert web.get(f"/api/tasks/{task_id}").status_code == 404
        page = BeautifulSoup(web.get("/executions", **HTML).text, "html.parser")
        shown = {a["href"].rsplit("/", 1)[-1] for a in page.select("a[href^='/tasks/']")}
        assert shown == set(kept)
        assert web.get("/api/health").json()["store"]["tasks"] == 6
        with psycopg.connect(pg_url) as conn:
            # the history of the old days went with their partitions, whole
            assert _history_days_before(conn, now - 3 * DAY) == 0
            oldest = conn.execute("SELECT min(written_at) FROM history").fetchone()
            assert oldest is not None and oldest[0] > now - 3 * DAY
        no_traceback(web.proc)
    finally:
        work.client.delete(own_stream)
        web.proc.stop()


def _lifecycle(task_id: str, t: float) -> list[Event]:
    fields = {"name": "proj.tidy", "queue": "celery"}
    return [
        task_event("sent", task_id, t, eid=f"{task_id}-s", retries=0, **fields),
        task_event("started", task_id, t + 1, eid=f"{task_id}-b", retries=0, **fields),
        task_event("succeeded", task_id, t + 2, eid=f"{task_id}-e", retries=0,
                   runtime=1.0, **fields),
    ]  # fmt: skip


def _history_days_before(conn: psycopg.Connection[Any], before: float) -> int:
    """How many of history's partitions hold only rows written before ``before``."""
    bounds = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_partition_tree('history') AS t"
        " JOIN pg_class AS c ON c.oid = t.relid WHERE t.isleaf"
    ).fetchall()
    numbers = [re.findall(r"-?\d+(?:\.\d+)?", str(bound)) for (bound,) in bounds]
    return sum(float(found[-1]) <= before for found in numbers if found)  # not DEFAULT


def _listed(web: Server) -> list[str]:
    answer = web.get("/api/tasks?limit=50")
    return [t["id"] for t in answer.json()["tasks"]] if answer.status_code == 200 else []
