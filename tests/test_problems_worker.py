"""Problems through a real worker: held behind a long task, waiting, late against the
usual and past a soft time limit, scheduled by countdown, revoked mid-run, and lost
when its worker is killed."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import stemtrace
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from tests.proj import make_app
from tests.support import Scenario, celery_worker, wait_for
from tests.test_queues_worker import broker  # noqa: F401  (Redis and RabbitMQ)

FAST = {"STEMTRACE_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture
def sender(scenario: Scenario) -> Iterator[Any]:
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    yield app
    capture.publisher.close(1)
    app.close()


def server(scenario: Scenario, db: Path) -> TestClient:
    settings = Settings(
        broker=scenario.broker, stream=scenario.stream, db=str(db),
        problem_held_seconds=1, problem_wait_seconds=1, problem_wait_factor=1,
        problem_late_seconds=1, worker_timeout_seconds=2,
    )  # fmt: skip
    return TestClient(create_app(settings))


def state_of(db: Path, task_id: str) -> str | None:
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def problems_of(http: TestClient) -> dict[str, dict[str, Any]]:
    """The problems now, by task id (or queue, or name), looked at afresh."""
    time.sleep(2.1)  # the watch's cache
    found = http.get("/api/problems").json()["problems"]
    return {p["task_id"] or p["queue"] or p["name"]: p for p in found}


def test_held_waiting_late_scheduled_and_revoked(
    scenario: Scenario, sender: Any, tmp_path: Path
) -> None:
    db = tmp_path / "p.db"
    tasks = sender.tasks
    with celery_worker(scenario, concurrency=1, extra_args=["--prefetch-multiplier", "1"],
                       **FAST), server(scenario, db) as http:  # fmt: skip
        usual = [tasks["proj.slow"].delay(0.01) for _ in range(25)]
        wait_for(lambda: state_of(db, usual[-1].id) == "SUCCESS", timeout=60)
        long = tasks["proj.slow"].delay(5.0)
        behind = [tasks["proj.add"].delay(n, n) for n in range(4)]
        wait_for(lambda: state_of(db, long.id) == "STARTED", timeout=30)

        def flagged() -> dict[str, dict[str, Any]] | None:
            found = problems_of(http)
            kinds = {found.get(r.id, {}).get("kind") for r in behind}
            return found if {"held", "waiting"} <= kinds and long.id in found else None

        found = wait_for(flagged, timeout=30)
        assert found[long.id]["kind"] == "late"
        assert "usual run time (p99)" in found[long.id]["reason"]
        held = next(found[r.id] for r in behind if found.get(r.id, {}).get("kind") == "held")
        assert "busy running 1 task (proj.slow)" in held["reason"]
        waiting = next(found[r.id] for r in behind if found.get(r.id, {}).get("kind") == "waiting")
        assert scenario.queue in waiting["reason"]
        wait_for(lambda: all(state_of(db, r.id) == "SUCCESS" for r in behind), timeout=30)
        cleared = problems_of(http)
        assert not {long.id, *(r.id for r in behind)} & set(cleared)

        limited = tasks["proj.limited"].delay(4.0)
        late = wait_for(lambda: problems_of(http).get(limited.id), timeout=20)
        assert late["kind"] == "late"
        assert "soft time limit of 1.0 s" in late["reason"]
        wait_for(lambda: state_of(db, limited.id) == "SUCCESS", timeout=20)

        later = tasks["proj.add"].apply_async((2, 2), countdown=4)
        wait_for(lambda: state_of(db, later.id) == "RECEIVED", timeout=20)
        scheduled = http.get("/api/queues").json()["scheduled"]
        assert [s["id"] for s in scheduled if s["id"] == later.id] == [later.id]
        page = http.get(f"/tasks/{later.id}").text
        assert "Due at" in page
        wait_for(lambda: state_of(db, later.id) == "SUCCESS", timeout=20)

        doomed = tasks["proj.slow"].delay(30.0)
        wait_for(lambda: state_of(db, doomed.id) == "STARTED", timeout=20)
        sender.control.revoke(doomed.id, terminate=True, signal="SIGTERM")
        wait_for(lambda: state_of(db, doomed.id) == "REVOKED", timeout=20)
        phases = http.get(f"/api/tasks/{doomed.id}").json()["phases"]
        assert phases[-1]["outcome"] == "revoked"
        assert phases[-1]["reason"] == "terminated (signal 15)"


def test_a_task_is_lost_with_its_killed_worker(
    broker: Scenario,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """On Redis and on RabbitMQ (events and tasks both through the broker)."""
    scenario, db = broker, tmp_path / "l.db"
    app = make_app(scenario.broker, scenario.queue, scenario.backend)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    sender = app
    with server(scenario, db) as http:
        with celery_worker(scenario, pool="solo", concurrency=1, **FAST) as worker:
            doomed = sender.tasks["proj.slow"].delay(60.0)
            wait_for(lambda: state_of(db, doomed.id) == "STARTED", timeout=30)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        lost = wait_for(lambda: problems_of(http).get(doomed.id), timeout=20)
        assert lost["kind"] == "lost"
        assert "stopped sending heartbeats" in lost["reason"]
        detail = http.get(f"/api/tasks/{doomed.id}").json()
        assert detail["state"] == "STARTED"  # what Celery last said; lost is derived
        assert detail["why"]["lost"]["worker"] == lost["worker"]
        page = http.get(f"/tasks/{doomed.id}").text
        assert "Lost with worker" in page
        node = next(n for n in http.get(f"/api/flows/{doomed.id}").json()["nodes"]
                    if n["id"] == doomed.id)  # fmt: skip
        assert node["lost"] and lost["worker"] in node["lost"]
    capture.publisher.close(1)
    app.close()
