"""``stemtrace demo`` as a user runs it: one process, a real Celery worker inside, no Redis."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port, stop_process, wait_for

SCRUBBED = {"__stemtrace__": "scrubbed"}

pytestmark = pytest.mark.worker  # the demo runs a real Celery worker in its process


class Demo:
    def __init__(self, process: subprocess.Popen[bytes], base: str, tmp_path: Path) -> None:
        self.process = process
        self.base = base
        self.log = tmp_path / "demo.log"
        self.db = tmp_path / "demo.db"

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base}{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def tasks(self, **filters: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/api/tasks", limit=500, **filters)["tasks"]
        return found

    def first(self, check: Any, **filters: Any) -> dict[str, Any]:
        """The first task matching ``filters`` whose detail passes ``check``, once there is one."""

        def find() -> dict[str, Any] | None:
            for row in self.tasks(**filters):
                task: dict[str, Any] = self.get(f"/api/tasks/{row['id']}")
                if check(task):
                    return task
            return None

        found: dict[str, Any] = wait_for(find, timeout=30, interval=0.5)
        return found


def demo_env(**extra: str) -> dict[str, str]:
    """This environment without any ``STEMTRACE_*`` setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port = free_port()
    log = tmp_path / "demo.log"  # a file, not a pipe: nothing reads it while the demo runs
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stemtrace.cli", "demo", "--port", str(port),
             "--db", str(tmp_path / "demo.db"), "--interval", "0.5"],
            cwd=tmp_path, env=demo_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None, timeout=30)
        if process.poll() is not None:
            pytest.fail(f"the demo exited: {log.read_text()}")
        yield Demo(process, base, tmp_path)
    finally:
        stop_process(process)


def test_the_demo_makes_every_kind_of_flow_and_stops_on_ctrl_c(demo: Demo) -> None:
    # An order: a chord (stock reserved per item) into the payment, under the order's trace id.
    charge = demo.first(lambda t: t["state"] == "SUCCESS", name="shop.charge_payment")
    assert charge["trace_id"].startswith("order-")
    trace = demo.get(f"/api/traces/{charge['trace_id']}")
    names = sorted(t["name"] for t in trace["tasks"])
    assert names.count("shop.reserve_stock") == 3 and "shop.charge_payment" in names
    flow = demo.get(f"/api/flows/{charge['id']}")
    [fan_in] = [n for n in flow["nodes"] if n["kind"] == "chord"]
    assert fan_in["size"] == 3
    into_charge = {e["source"] for e in flow["edges"] if e["kind"] == "chord"}
    assert len(into_charge) == 3
    assert {e["target"] for e in flow["edges"] if e["kind"] == "chord"} == {charge["id"]}

    # A secret in the kwargs arrives scrubbed: the payment's API key, the sign-up's password.
    assert charge["kwargs"]["api_key"] == SCRUBBED
    account = demo.first(lambda t: t["kwargs"] is not None, name="shop.create_account")
    assert account["kwargs"]["password"] == SCRUBBED
    assert account["kwargs"]["email"].endswith("@example.com")

    # A flaky payment: retried after ConnectionErrors, then succeeded.
    retried = demo.first(
        lambda t: t["state"] == "SUCCESS" and t["retries"] > 0, name="shop.charge_payment"
    )
    attempts = retried["attempts"]
    assert [a["state"] for a in attempts] == ["RETRY"] * retried["retries"] + ["SUCCESS"]
    assert {a["exc_type"] for a in attempts[:-1]} == {"ConnectionError"}

    # A chain that breaks: the links after the failure never ran.
    failed = demo.first(lambda t: True, state="FAILURE")
    assert failed["name"] == "shop.parse_feed"
    assert failed["exception"]["type"] == "ValueError"
    flow = demo.get(f"/api/flows/{failed['id']}")
    after = {e["target"] for e in flow["edges"] if e["kind"] == "chain"} - {failed["id"]}
    not_run = [n for n in flow["nodes"] if n["state"] == "NOT_RUN"]
    assert sorted(n["name"] for n in not_run) == ["shop.publish_catalog", "shop.update_prices"]
    assert {n["id"] for n in not_run} <= after

    # A task that sends children from inside its body.
    newsletter = demo.first(lambda t: t["state"] == "SUCCESS", name="shop.send_newsletter")
    children = newsletter["children"]
    assert len(children) == newsletter["result"] >= 2
    assert {c["name"] for c in children} == {"shop.send_email"}
    flow = demo.get(f"/api/flows/{newsletter['id']}")
    spawned = {e["target"] for e in flow["edges"] if e["kind"] == "spawned"}
    assert spawned == {c["id"] for c in children}

    # The worker runs in the demo's own process.
    [worker] = demo.get("/api/workers")["workers"]
    assert worker["state"] == "online" and worker["pool"] == "thread"
    assert worker["pid"] == demo.process.pid

    # Ctrl-C: a clean stop, promptly, with the worker seen going offline.
    started = time.monotonic()
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(10) == 0
    assert time.monotonic() - started < 8
    output = demo.log.read_text()
    assert f"demo: {demo.base}/" in output
    assert "Traceback" not in output and "ERROR" not in output, output
    # The worker stopped before the consumer did, so its last event was stored.
    with closing(sqlite3.connect(demo.db)) as db:
        assert db.execute("SELECT state FROM workers").fetchall() == [("offline",)]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--interval", "0"],
            {},
            "argument --interval: must be a positive number of seconds, not 0",
        ),
        (
            ["--interval", "inf"],
            {},
            "argument --interval: must be a positive number of seconds, not inf",
        ),
        (
            [],
            {"STEMTRACE_INTERVAL": "-1"},
            "STEMTRACE_INTERVAL must be a positive number of seconds",
        ),
        ([], {"STEMTRACE_INTERVAL": "often"}, "STEMTRACE_INTERVAL='often' is invalid"),
        ([], {"STEMTRACE_PORT": "0"}, "STEMTRACE_PORT must be between 1 and 65535, not 0"),
        (["--host", "0.0.0.0"], {}, "refusing to serve 0.0.0.0 without authentication"),
    ],
)
def test_bad_demo_options_stop_with_a_clear_message(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stemtrace.cli", "demo", "--db", str(tmp_path / "d.db"), *args],
        capture_output=True, text=True, timeout=60, env=demo_env(**env),
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "d.db").exists()
