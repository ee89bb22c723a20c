"""The command line, as a user runs it: real processes, real ports, real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from stemtrace import __version__
from stemtrace.events import encode_frame
from stemtrace.transports.redis import FRAME_FIELD
from tests.support import Scenario, free_port, stop_process, wait_for


def stemtrace(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemtrace.cli", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


@contextmanager
def server(*args: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "run", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None, timeout=30)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        yield base
    finally:
        stop_process(process)
        if process.stdout:
            process.stdout.close()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_version() -> None:
    result = stemtrace("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"stemtrace {__version__}"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--port", "70000"], {}, "port must be between 1 and 65535"),
        (["run", "--broker", "localhost"], {}, "broker must be a URL"),
        (["run"], {"STEMTRACE_RETENTION_DAYS": "a week"}, "STEMTRACE_RETENTION_DAYS='a week'"),
        (["run", "--max-tasks", "many"], {}, "invalid int value: 'many'"),
        (["consume", "--log-level", "loud"], {}, "invalid choice: 'loud'"),
        ([], {}, "usage: stemtrace"),
    ],
)
def test_bad_options_stop_with_a_clear_message(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = stemtrace(*args, **env)
    assert result.returncode == 2
    assert message in result.stderr + result.stdout


def test_the_server_starts_and_says_so_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with server("--broker", dead, "--db", str(tmp_path / "s.db")) as base:
        health = wait_for(lambda: _degraded(base))
    assert health["consumer"]["connected"] is False
    assert "Connection" in health["consumer"]["last_error"]


def _degraded(base: str) -> dict[str, Any] | None:
    found: dict[str, Any] = httpx.get(f"{base}/api/health").json()
    return found if found["status"] == "degraded" and found["consumer"]["last_error"] else None


def test_a_separate_consumer_feeds_a_server_without_one(scenario: Scenario, tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    client = redis.Redis.from_url(scenario.broker)
    now = time.time()  # older events would fall to the default 7-day retention at once
    events = [
        {"kind": "succeeded", "eid": f"e{n}", "ts": now + n, "host": "celery@w", "pid": 1,
         "task_id": f"t{n}", "name": "proj.add", "result": n}
        for n in range(25)
    ]  # fmt: skip
    client.xadd(scenario.stream, {FRAME_FIELD: encode_frame(events)})
    client.close()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "consume", "--broker", scenario.broker,
         "--stream", scenario.stream, "--db", db, "--log-level", "warning"],
    )  # fmt: skip
    try:
        with server("--no-consumer", "--db", db) as base:
            page = wait_for(lambda: _full_page(base, 25))
            assert {t["state"] for t in page} == {"SUCCESS"}
            assert httpx.get(f"{base}/api/health").json()["consumer"] is None
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(15) == 0


def _full_page(base: str, size: int) -> list[dict[str, Any]] | None:
    tasks: list[dict[str, Any]] = httpx.get(f"{base}/api/tasks", params={"limit": 100}).json()[
        "tasks"
    ]
    return tasks if len(tasks) == size else None


def test_celery_subcommand_takes_the_broker_from_the_app(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "STEMTRACE_TEST_BROKER": "redis://127.0.0.1:6379/9",
        "STEMTRACE_TEST_CAPTURE": "0",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.proj:app", "stemtrace",
         "--port", str(port), "--db", str(tmp_path / "c.db"), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None, timeout=30)
        health = httpx.get(f"{base}/api/health").json()
        assert health["consumer"]["source"] == "redis://127.0.0.1:6379/9#stemtrace:events"
    finally:
        stop_process(process)
