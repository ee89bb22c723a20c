"""The command line, as a user runs it: real processes, real ports, real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from stemtrace import __version__
from stemtrace.core.events import encode_frame
from stemtrace.transports.redis import FRAME_FIELD
from tests.factories import task_event
from tests.support import ROOT, Scenario, free_port, stop_process, wait_for

README = (ROOT / "README.md").read_text()


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
        (["run", "--port", "70000"], {}, "argument --port: must be between 1 and 65535"),
        (["run", "--broker", "localhost"], {}, "argument --broker: must be a URL"),
        (["run"], {"STEMTRACE_RETENTION_DAYS": "a week"}, "STEMTRACE_RETENTION_DAYS='a week'"),
        (["run"], {"STEMTRACE_PORT": "abc"}, "error: STEMTRACE_PORT='abc' is invalid"),
        (
            ["run", "--retention-days", "-1"],
            {},
            "error: argument --retention-days: must not be negative, not -1",
        ),
        (
            ["consume"],
            {"STEMTRACE_RETENTION_DAYS": "-1"},
            "error: STEMTRACE_RETENTION_DAYS must not be negative, not -1",
        ),
        (
            ["run", "--max-tasks", "-5"],
            {"STEMTRACE_MAX_TASKS": "10"},
            "error: argument --max-tasks: must not be negative, not -5",
        ),
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
    assert "stemtrace: stemtrace:" not in result.stderr and "Traceback" not in result.stderr


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
        task_event("succeeded", f"t{n}", now + n, name="proj.add", result=n) for n in range(25)
    ]
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


def test_tail_into_head_stops_quietly(scenario: Scenario) -> None:
    """``stemtrace tail | head``: once head has its lines, tail ends without a traceback."""
    client = redis.Redis.from_url(scenario.broker)
    now = time.time()
    for frame in range(10):  # far more than a pipe holds, so tail writes after head is gone
        events = [
            task_event(
                "succeeded",
                f"t{frame}-{n}",
                now,
                eid=f"e{frame}-{n}",
                name="proj.add",
                result="x" * 100,
            )
            for n in range(200)
        ]
        client.xadd(scenario.stream, {FRAME_FIELD: encode_frame(events)})
    client.close()
    tail = subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "tail", "--from-start",
         "--broker", scenario.broker, "--stream", scenario.stream],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tail.stdout is not None and tail.stderr is not None
    head = subprocess.run(["head", "-n", "2"], stdin=tail.stdout, capture_output=True, timeout=30)
    tail.stdout.close()
    try:
        assert tail.wait(30) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.stderr.read() == b""
    tail.stderr.close()
    assert [json.loads(line)["eid"] for line in head.stdout.splitlines()] == ["e0-0", "e0-1"]


def readme_defaults(section: str) -> dict[str, str]:
    """Flag -> default, from the table of the README section that opens with ``section``."""
    text = README.split(section, 1)[1].split("\n## ", 1)[0]
    found = {}
    for row in text.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--") and cells[2].startswith("`"):
            found[cells[0].strip("`")] = cells[2].strip("`")
    return found


def help_entries(text: str) -> dict[str, str]:
    """Each option of a ``--help`` text, by its first flag: its whole entry on one line."""
    entries: dict[str, str] = {}
    flag = ""
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = ""
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize(
    ("command", "section"),
    [("run", "## The server: `stemtrace run`"), ("demo", "## The demo: `stemtrace demo`")],
)
def test_help_gives_the_defaults_the_readme_lists(command: str, section: str) -> None:
    defaults = readme_defaults(section)
    assert len(defaults) >= 2
    result = stemtrace(command, "--help", COLUMNS="1000")
    assert result.returncode == 0
    entries = help_entries(result.stdout)
    for flag, default in defaults.items():
        assert f"; default {default})" in entries[flag], (flag, entries[flag])


def test_celery_subcommand_help_lists_the_flags_it_passes_on() -> None:
    env = {**os.environ, "STEMTRACE_TEST_CAPTURE": "0", "COLUMNS": "1000",
           "PYTHONPATH": str(Path(__file__).parent.parent)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.proj:app", "stemtrace", "--help"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = help_entries(result.stdout)
    run_flags = set(help_entries(stemtrace("run", "--help").stdout)) - {"-h"}
    assert run_flags >= {"--port", "--db", "--retention-days", "--auth-token"}
    assert set(shown) >= run_flags
    assert "default 8000" in shown["--port"]
    assert "default: the app's broker" in shown["--broker"]


def test_tail_prints_only_what_arrives_after_it_starts(scenario: Scenario) -> None:
    client = redis.Redis.from_url(scenario.broker)
    old = task_event("succeeded", "old", time.time(), name="proj.add")
    client.xadd(scenario.stream, {FRAME_FIELD: encode_frame([old])})
    tail = subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "tail",
         "--broker", scenario.broker, "--stream", scenario.stream],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tail.stdout is not None
    lines: list[bytes] = []
    reading = threading.Thread(target=lambda: lines.append(tail.stdout.readline()), daemon=True)
    reading.start()
    try:
        for n in range(60):  # until tail has started and prints one
            new = task_event("succeeded", f"new-{n}", time.time(), name="proj.add")
            client.xadd(scenario.stream, {FRAME_FIELD: encode_frame([new])})
            reading.join(0.5)
            if lines:
                break
    finally:
        tail.kill()
        tail.wait(10)
        reading.join(5)
        tail.stdout.close()
        assert tail.stderr is not None
        tail.stderr.close()
        client.close()
    assert lines and json.loads(lines[0])["task_id"].startswith("new-")
