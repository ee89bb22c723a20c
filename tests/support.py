"""Helpers for the integration tests: Redis, real workers, reading the stream back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from stemtrace.core.events import decode_frame

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("STEMTRACE_TEST_REDIS_PORT", "6379"))
AMQP_URL = os.environ.get("STEMTRACE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def private_db(key: str) -> int:
    """A Redis database number (1-15) for the test named ``key``. Under pytest-xdist
    each worker process draws from a share of its own, so two tests running at once
    never share a database (nor its Celery event fanout or worker heartbeats)."""
    count = max(1, min(15, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = [db for db in range(1, 16) if (db - 1) % count == worker % count]
    return share[zlib.crc32(key.encode()) % len(share)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_events(url: str, stream: str, after: str | None = None) -> list[dict[str, Any]]:
    """Every valid event in ``stream`` (past the entry ``after``, if given), in stream
    order; fails on a malformed one."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(stream, min="-" if after is None else f"({after}")
    finally:
        client.close()
    found: list[dict[str, Any]] = []
    for _entry_id, fields in entries:
        decoded = decode_frame(fields[b"d"])
        assert not decoded.errors, decoded.errors
        found.extend(decoded.events)
    return found


def stored_events(conn: Any) -> int:
    """How many history records a store holds, doubles included."""
    found = conn.execute("SELECT SUM(json_array_length(events)) FROM history").fetchone()[0]
    return int(found or 0)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@dataclass
class Scenario:
    """One test's private broker database, queue and stream key."""

    db: int
    queue: str = field(default_factory=lambda: f"q-{uuid.uuid4().hex[:12]}")
    stream: str = field(default_factory=lambda: f"stemtrace-test:{uuid.uuid4().hex[:12]}")
    transport_url: str | None = None
    amqp: bool = False
    """Celery's broker and the events on RabbitMQ; results stay in Redis."""
    after: str | None = None
    """The stream's last entry when a test began (:meth:`from_now`): its events come later."""

    @property
    def broker(self) -> str:
        return AMQP_URL if self.amqp else redis_url(self.db)

    @property
    def backend(self) -> str:
        return redis_url(self.db)

    @property
    def events_url(self) -> str:
        return self.transport_url or self.broker

    def events(self) -> list[dict[str, Any]]:
        if self.amqp:
            raise AssertionError("events on RabbitMQ are read through a consumer, not XRANGE")
        return read_events(self.events_url, self.stream, self.after)

    def from_now(self) -> Scenario:
        """The same queue and stream, whose :meth:`events` are those added from now on: a
        test's own view of a stream it shares with the tests before it (and their worker)."""
        client = redis.Redis.from_url(self.events_url)
        try:
            last = client.xrevrange(self.stream, count=1)
        finally:
            client.close()
        return replace(self, after=last[0][0].decode() if last else "0-0")

    def of(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("task_id") == task_id and (kind is None or e["kind"] == kind)
        ]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "STEMTRACE_TEST_BROKER": self.broker,
            "STEMTRACE_TEST_BACKEND": self.backend,
            "STEMTRACE_TEST_QUEUE": self.queue,
            "STEMTRACE_STREAM": self.stream,
            "STEMTRACE_FLUSH_INTERVAL": "0.05",
            "PYTHONPATH": str(ROOT),
            # Pickle is accepted (for the unserializable-arg test) and CI runs as root.
            "C_FORCE_ROOT": "1",
        }
        if self.transport_url:
            env["STEMTRACE_TRANSPORT_URL"] = self.transport_url
        env.update(extra)
        return env

    def cleanup(self) -> None:
        client = redis.Redis.from_url(self.backend)
        try:
            client.delete(self.stream, self.queue)
        finally:
            client.close()


@contextmanager
def celery_worker(
    scenario: Scenario,
    pool: str = "prefork",
    concurrency: int = 2,
    extra_args: Sequence[str] = (),
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` process on the scenario's queue, ready when yielded."""
    name = f"w{uuid.uuid4().hex[:8]}@%h"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.proj:app",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-Q",
        scenario.queue,
        "-n",
        name,
        "--without-mingle",
        "--without-gossip",
        "-l",
        "info",
        *extra_args,
    ]
    log_path = ROOT / ".pytest_cache" / f"worker-{scenario.queue}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=scenario.env(**env), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_for(lambda: process.poll() is not None or ready(scenario, log_path), timeout=30)
        except AssertionError:
            raise AssertionError(f"worker did not start: {log_path.read_text()[-3000:]}") from None
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {log_path.read_text()[-3000:]}")
        yield process
    finally:
        stop_process(process)


def ready(scenario: Scenario, log_path: Path) -> bool:
    """Celery logs "<name> ready." once it consumes; the events may go anywhere."""
    return b" ready." in log_path.read_bytes()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port, which a test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: _ping(client), timeout=10)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class PrivateRabbit:
    """A throw-away RabbitMQ node on free ports, which a test may stop and restart.

    Its data lives under ``base``, so durable queues and persistent messages
    survive a restart, as on a real broker.
    """

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its parents are private to root, and the
        # broker runs as the rabbitmq user.
        base = Path(tempfile.mkdtemp(prefix="stemtrace-rabbit-"))
        base.chmod(0o755)
        self.port = free_port()
        self.node = f"stemtrace{self.port}@localhost"
        self.base = base
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "plugins").write_text("[].\n")
        shutil.chown(base / "plugins", "rabbitmq", "rabbitmq")
        for path in (base, base / "mnesia", base / "log"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "mnesia" / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "mnesia" / "plugins-expand"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["rabbitmq-server"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for(self._answers, timeout=60, interval=0.5)

    def _answers(self) -> bool:
        from kombu.connection import Connection

        connection = Connection(self.url, connect_timeout=1)
        try:
            connection.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False
        finally:
            connection.release()

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True,
            timeout=60, check=False,
        )  # fmt: skip
        process = getattr(self, "process", None)
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
