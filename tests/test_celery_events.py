"""Workers without init(app) but with Celery's own events (-E) show up, as in Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import chain
from starlette.testclient import TestClient

import stemtrace
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.transports.celery_events import convert
from tests.observed import Observed
from tests.proj import make_app
from tests.support import Scenario, celery_worker, wait_for


def test_convert_maps_celery_events() -> None:
    failed = convert({
        "type": "task-failed", "uuid": "t1", "timestamp": 5.0, "hostname": "w@h",
        "exception": "ValueError('bad <input>')", "traceback": "Traceback...",
    })  # fmt: skip
    assert failed is not None
    assert (failed["kind"], failed["exc_type"], failed["exc_message"]) == (
        "failed", "ValueError", "bad <input>",
    )  # fmt: skip
    assert failed["source"] == "celery" and failed["worker"] == "w@h"
    sent = convert({"type": "task-sent", "uuid": "t2", "timestamp": 1.0, "name": "proj.add",
                    "args": "(1, 2)", "kwargs": "{}", "retries": 0, "root_id": "t2"})  # fmt: skip
    assert sent is not None and sent["args"]["repr"] == "(1, 2)"
    assert convert({"type": "task-sent", "timestamp": 1.0}) is None  # no uuid
    assert convert({"type": "something-else", "timestamp": 1.0}) is None
    assert convert(["not", "a", "dict"]) is None


def test_a_worker_without_init_shows_its_tasks(scenario: Scenario, tmp_path: Path) -> None:
    app = make_app(scenario.broker, scenario.queue)  # the sender has no init(app) either
    app.conf.task_send_sent_event = True
    settings = Settings(broker=scenario.broker, stream=scenario.stream,
                        db=str(tmp_path / "c.db"), retention_days=0)  # fmt: skip
    with TestClient(create_app(settings)) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["celery_events"]["connected"])
        observed = Observed(app, http)
        env = {"STEMTRACE_TEST_CAPTURE": "0"}
        with celery_worker(scenario, pool="solo", extra_args=["-E"], **env):
            add, fail = app.tasks["proj.add"], app.tasks["proj.fail"]
            result = chain(add.s(1, 2), add.s(3)).apply_async()
            assert result.get(timeout=20) == 6
            broken = fail.delay("x")
            task = observed.task(result.id, "SUCCESS")
            assert task["parent_id"] == result.parent.id and task["root_id"] == result.parent.id
            assert task["sources"] == ["celery"]
            assert task["args"]["__stemtrace__"] == "repr"
            failed = observed.task(broken.id, "FAILURE")
            assert failed["exception"] == {"type": "ValueError", "message": "broken link at x"}
            workers = wait_for(lambda: http.get("/api/workers").json()["workers"])
            assert workers[0]["state"] == "online"
            page = http.get(f"/tasks/{result.id}")
            assert "stemtrace.init(app)" in page.text  # the page says what is missing


def test_both_sources_merge_into_one_task(scenario: Scenario, tmp_path: Path) -> None:
    app = make_app(scenario.broker, scenario.queue)
    app.conf.task_send_sent_event = True
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    settings = Settings(broker=scenario.broker, stream=scenario.stream,
                        db=str(tmp_path / "m.db"), retention_days=0)  # fmt: skip
    with TestClient(create_app(settings)) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["celery_events"]["connected"])
        observed = Observed(app, http)
        with celery_worker(scenario, pool="solo", extra_args=["-E"]):
            retried = app.tasks["proj.flaky"].delay(9)
            assert retried.get(timeout=20) == 9

            def both() -> dict[str, Any] | None:
                task = observed.task(retried.id, "SUCCESS")
                return task if set(task["sources"]) == {"stemtrace", "celery"} else None

            task = wait_for(both, timeout=20)
            listed = http.get("/api/tasks", params={"q": retried.id}).json()["tasks"]
            assert [t["id"] for t in listed] == [retried.id]  # one task, not two
    assert task["args"] == [9]  # the structured capture, not Celery's repr string
    assert [a["state"] for a in task["attempts"]] == ["RETRY", "RETRY", "SUCCESS"]
    assert [e["kind"] for e in task["events"]].count("started") == 3  # no doubled history
    capture.publisher.close(1)
