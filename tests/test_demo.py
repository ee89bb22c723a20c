"""``stemtrace demo`` as a user runs it: one process, a real Celery worker inside, no Redis."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
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
    with running_demo(tmp_path) as running:
        yield running


@contextmanager
def running_demo(tmp_path: Path, *args: str) -> Iterator[Demo]:
    port = free_port()
    log = tmp_path / "demo.log"  # a file, not a pipe: nothing reads it while the demo runs
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stemtrace.cli", "demo", "--port", str(port),
             "--db", str(tmp_path / "demo.db"), "--interval", "0.5", *args],
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

    # Two workers run in the demo's own process: the shop's, and one slot for reports.
    workers = {w["hostname"].split("@")[0]: w for w in demo.get("/api/workers")["workers"]}
    assert sorted(workers) == ["reports", "shop"]
    for worker in workers.values():
        assert worker["state"] == "online" and worker["pool"] == "thread"
        assert worker["pid"] == demo.process.pid
    assert workers["shop"]["queues"] == ["celery"] and workers["shop"]["concurrency"] == 4
    assert workers["reports"]["queues"] == ["reports"] and workers["reports"]["concurrency"] == 1
    # Each task names the worker that ran it.
    ran_on = {t["name"]: t["worker"] for t in demo.tasks(state="STARTED")}
    assert ran_on.get("shop.rebuild_search_index") == workers["reports"]["hostname"]
    assert charge["worker"] == workers["shop"]["hostname"]
    # Problems show sooner than in production, unless told otherwise.
    assert demo.get("/api/problems")["thresholds"]["held_seconds"] == 10

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
        assert db.execute("SELECT state FROM workers").fetchall() == [("offline",)] * 2


def test_the_demo_shows_a_backlog_a_scheduled_task_and_the_problems(tmp_path: Path) -> None:
    flags = ("--problem-held-seconds", "2", "--problem-wait-seconds", "2")
    with running_demo(tmp_path, *flags) as demo:
        wanted = {"unconsumed", "waiting", "held", "late"}

        def problems() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = demo.get("/api/problems")["problems"]
            return found if wanted <= {p["kind"] for p in found} else None

        found = wait_for(problems, timeout=30, interval=0.5)
        # Nobody consumes the exports queue: the queue, and its task waiting there.
        [unconsumed] = [p for p in found if p["kind"] == "unconsumed"]
        assert unconsumed["queue"] == "exports" and unconsumed["waiting"] >= 1
        assert any(p["kind"] == "waiting" and p["queue"] == "exports" for p in found)
        # The reports worker's one slot runs the rebuild (past its soft limit), holding a report.
        [late] = [p for p in found if p["kind"] == "late"]
        assert late["name"] == "shop.rebuild_search_index"
        assert late["worker"].startswith("reports@")
        assert "past its soft time limit of 8.0 s" in late["reason"]
        [held] = [p for p in found if p["kind"] == "held"]
        assert held["name"] == "shop.build_sales_report" and held["worker"] == late["worker"]
        assert "busy running 1 task (shop.rebuild_search_index)" in held["reason"]

        # The queues page: the broker's own counts, a backlog, and a reminder scheduled.
        def queues() -> dict[str, Any] | None:
            found: dict[str, Any] = demo.get("/api/queues")
            counted = {q["queue"]: (q["broker"] or {}).get("messages") for q in found["queues"]}
            reminders = [s for s in found["scheduled"] if s["name"] == "shop.remind_cart"]
            ready = counted.get("reports") and counted.get("exports") and reminders
            return found if ready else None

        found_queues = wait_for(queues, timeout=15, interval=0.5)
        by_name = {q["queue"]: q for q in found_queues["queues"]}
        assert by_name["reports"]["broker"]["messages"] == 2  # behind the held one
        assert by_name["reports"]["backlog"] and by_name["reports"]["problem"] is None
        assert by_name["exports"]["problem"] == "nobody consumes this queue"
        scheduled = found_queues["scheduled"]
        reminder = next(s for s in scheduled if s["name"] == "shop.remind_cart")
        assert reminder["due_in"] > 0 and reminder["worker"].startswith("shop@")


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
