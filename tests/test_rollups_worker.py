"""Rollups through a real worker: the charts', registry's and error groups' numbers equal
what the tasks table says, across a server restart mid-stream and the whole stream read twice."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, group
from starlette.testclient import TestClient

import stemtrace
from stemtrace.core import errors
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from tests.proj import make_app
from tests.support import Scenario, celery_worker, wait_for

OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")


@pytest.fixture
def sender(scenario: Scenario) -> Iterator[Any]:
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    yield app
    capture.publisher.close(1)
    app.close()


def server(scenario: Scenario, db: Path) -> TestClient:
    settings = Settings(broker=scenario.broker, stream=scenario.stream, db=str(db))
    return TestClient(create_app(settings))


def truth(db: Path) -> dict[str, Any]:
    """The numbers counted straight from the tasks table."""
    conn = sqlite3.connect(db)
    try:
        per_name = {
            name: dict(zip(OUTCOMES, values, strict=True))
            for name, *values in conn.execute(
                """SELECT name, SUM(sent_at IS NOT NULL), SUM(started_at IS NOT NULL),
                       SUM(state = 'SUCCESS'), SUM(state = 'FAILURE'), SUM(retries),
                       SUM(state IN ('REVOKED', 'REJECTED'))
                   FROM tasks WHERE name IS NOT NULL GROUP BY name"""
            )
        }
        groups = Counter(
            (name, errors.fingerprint(exc_type, message or ""))
            for name, exc_type, message in conn.execute(
                "SELECT name, exc_type, exc_message FROM tasks WHERE state = 'FAILURE'"
            )
        )
        total = conn.execute("SELECT COUNT(*) FROM tasks WHERE name IS NOT NULL").fetchone()[0]
    finally:
        conn.close()
    return {"per_name": per_name, "groups": groups, "total": total}


def shown(http: TestClient) -> dict[str, Any]:
    """The same numbers as the API shows them: stats per name, registry, error groups."""
    per_name = {}
    registry = {t["name"]: t for t in http.get("/api/registry").json()["tasks"]}
    for name in registry:
        if not registry[name]["counts"]["total"]:
            continue
        points = http.get("/api/stats", params={"since": "1h", "name": name}).json()["points"]
        per_name[name] = {c: sum(p[c] for p in points) for c in OUTCOMES}
    groups = Counter(
        {
            (g["name"], g["fingerprint"]): g["count"]
            for g in http.get("/api/errors", params={"since": "1h"}).json()["groups"]
        }
    )
    total = sum(t["counts"]["total"] for t in registry.values())
    return {"per_name": per_name, "groups": groups, "total": total, "registry": registry}


def settled(db: Path, count: int) -> bool:
    if not db.exists():
        return False
    conn = sqlite3.connect(db)
    try:
        done = conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED')"
        ).fetchone()[0]
    except sqlite3.OperationalError:  # not migrated yet
        return False
    finally:
        conn.close()
    return bool(done >= count)


def test_rollups_equal_the_tasks_table_across_a_restart_and_a_second_reading(
    scenario: Scenario, sender: Any, tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    tasks = sender.tasks
    with celery_worker(scenario, concurrency=2):
        first = server(scenario, db)
        with first:
            results = [tasks["proj.add"].delay(n, n) for n in range(12)]
            results += [tasks["proj.fail"].delay(n) for n in range(4)]
            results += [tasks["proj.flaky"].delay(n) for n in range(2)]
            wait_for(lambda: settled(db, 4), timeout=60)  # stop mid-stream
        results.append(chain(tasks["proj.add"].s(1, 1), tasks["proj.fail"].s()).delay())
        results.append(group(tasks["proj.add"].s(n, 1) for n in range(5)).delay())
        expected = 12 + 4 + 2 + 2 + 5
        with server(scenario, db):  # a new server on the same file picks up where it stopped
            wait_for(lambda: settled(db, expected), timeout=90)
            time.sleep(1.0)  # the last retries' and results' events
    found = truth(db)
    assert found["total"] == expected
    assert found["per_name"]["proj.flaky"]["retried"] == 4  # two tasks, two retries each
    with server(scenario, db) as http:
        seen = shown(http)
        assert seen["per_name"] == found["per_name"]
        assert seen["groups"] == found["groups"]
        assert seen["total"] == found["total"]
        assert seen["registry"]["proj.fail"]["counts"]["failed"] == 5
    # Read the whole stream again, as after a lost cursor: every event delivered twice.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM cursors")
    conn.commit()
    conn.close()
    with server(scenario, db) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["lag_seconds"] == 0.0,
                 timeout=60)  # fmt: skip
        again = shown(http)
    assert truth(db) == found
    assert {k: again[k] for k in ("per_name", "groups", "total")} == {
        k: seen[k] for k in ("per_name", "groups", "total")
    }
