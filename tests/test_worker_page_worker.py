"""The worker page against a real worker: one process busy on a long task, another task
held behind it (prefetched, not started); both move on when the long task ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.testclient import TestClient

import stemtrace
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from tests.proj import make_app
from tests.site import html, one, text
from tests.support import Scenario, celery_worker, wait_for

LONG = 6.0


def test_the_page_shows_the_running_task_and_the_one_held_behind_it(
    scenario: Scenario, tmp_path: Path
) -> None:
    settings = Settings(broker=scenario.broker, stream=scenario.stream,
                        db=str(tmp_path / "w.db"), celery_events=False)  # fmt: skip
    app = make_app(scenario.broker, scenario.queue, scenario.backend)
    with TestClient(create_app(settings)) as http:
        wait_for(lambda: http.get("/api/health").json()["consumer"]["connected"])
        capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
        assert capture is not None

        def task(task_id: str) -> dict[str, Any]:
            found: dict[str, Any] = http.get(f"/api/tasks/{task_id}").json()
            return found

        try:
            with celery_worker(scenario, concurrency=1):  # prefetches 4: one more is held
                long = app.tasks["proj.slow"].delay(LONG)
                wait_for(lambda: task(long.id).get("state") == "STARTED", timeout=30)
                held = app.tasks["proj.add"].delay(1, 2)
                wait_for(lambda: task(held.id).get("state") == "RECEIVED", timeout=30)
                hostname = task(long.id)["worker"]
                assert task(held.id)["worker"] == hostname
                api = f"/api/workers/{quote(hostname, safe='')}"
                shown = http.get(api).json()
                assert [t["id"] for t in shown["running"]] == [long.id]
                assert [t["id"] for t in shown["held"]] == [held.id]
                assert shown["scheduled"] == [] and shown["failures"] == []
                worker = shown["worker"]
                assert worker["state"] == "online"
                assert (worker["pool"], worker["concurrency"]) == ("prefork", 1)
                assert scenario.queue in worker["queues"]
                first = shown["running"][0]["elapsed"]
                assert 0 <= first < LONG + 5

                soup = html(http.get(f"/workers/{quote(hostname, safe='')}"))
                assert text(one(soup, "h1")) == hostname
                row = one(soup, "#running tr[data-task]")
                assert row["data-task"] == long.id
                assert text(one(row, "td.elapsed")).endswith("s")
                assert one(soup, "#held tr[data-task]")["data-task"] == held.id
                # The time it has run grows while it runs.
                wait_for(lambda: (r := http.get(api).json()["running"]) and r[0]["elapsed"]
                         >= first + 1.0, timeout=10)  # fmt: skip

                assert long.get(timeout=30) == LONG
                assert held.get(timeout=30) == 3

                def moved_on() -> bool:
                    now = http.get(api).json()
                    return not now["running"] and not now["held"]

                wait_for(moved_on, timeout=20)
                assert task(long.id)["state"] == task(held.id)["state"] == "SUCCESS"
                points = http.get(api).json()["points"]
                assert sum(p["succeeded"] for p in points) == 2
                soup = html(http.get(f"/workers/{quote(hostname, safe='')}"))
                assert not soup.select("#running tr[data-task], #held tr[data-task]")
        finally:
            capture.publisher.close(1)
