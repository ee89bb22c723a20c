"""Problems in a real browser: the count in the navigation follows them live, and the
problems, queues and worker pages show them (the README's screenshots come from here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from e2e.conftest import Server, start_server
from e2e.test_ui import shot
from stemtrace.server.security import CSP
from tests.support import Scenario, celery_worker, free_port, stop_process, wait_for

THRESHOLDS = ("--problem-held-seconds", "1", "--problem-wait-seconds", "1",
              "--problem-wait-factor", "1", "--problem-late-seconds", "1",
              "--worker-timeout-seconds", "2")  # fmt: skip
"""Short enough that a task held or waiting for a second counts."""
VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
"""Collects what the Content-Security-Policy blocked; added before any page script runs."""


@pytest.fixture
def server(scenario: Scenario, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "stemtrace.cli", "run", "--port", str(port),
               "--broker", scenario.broker, "--stream", scenario.stream,
               "--db", str(tmp_path / "e2e.db"), "--log-level", "warning", *THRESHOLDS]  # fmt: skip
    found = start_server(command, {}, f"http://127.0.0.1:{port}/api/health")
    yield found
    stop_process(found.process)


@pytest.fixture
def worker(scenario: Scenario) -> Iterator[None]:
    """One process that takes one message at a time: what queues behind a long task waits."""
    with celery_worker(scenario, concurrency=1, extra_args=["--prefetch-multiplier", "1"],
                       STEMTRACE_HEARTBEAT_INTERVAL="0.5"):  # fmt: skip
        yield


@pytest.fixture
def nobody(scenario: Scenario) -> Iterator[str]:
    """A queue that no worker consumes; its message is removed from the broker after."""
    queue = f"{scenario.queue}-nobody"
    yield queue
    client = redis.Redis.from_url(scenario.broker)
    try:
        client.delete(queue)
    finally:
        client.close()


def online_worker(base: str) -> str:
    """The hostname of the worker, once it is online and its task definitions are stored
    (the problems read the soft time limits from them)."""

    def ready() -> str | None:
        workers = httpx.get(base + "/api/workers", timeout=5).json()["workers"]
        defined = httpx.get(base + "/api/registry", timeout=5).json()["tasks"]
        online = [w["hostname"] for w in workers if w["state"] == "online"]
        limited = any(t["name"] == "proj.limited" for t in defined)
        return online[0] if online and limited else None

    found: str = wait_for(ready, timeout=30)
    return found


def scheduled_by(base: str, task_id: str) -> str | None:
    """The worker holding a scheduled task until it is due, as the queues API says."""
    scheduled = httpx.get(base + "/api/queues", timeout=5).json()["scheduled"]
    return next((s["worker"] for s in scheduled if s["id"] == task_id), None)


def check_clean(page: Page, errors: list[str]) -> None:
    """No console errors and nothing the Content-Security-Policy had to block."""
    assert errors == [], errors
    assert page.evaluate("window.__violations") == [], page.url


def test_the_navigation_counts_problems_live_and_their_pages_show_them(
    page: Page,
    browser: Browser,
    scenario: Scenario,
    server: Server,
    sender: tuple[Any, Any],
    worker: None,
    nobody: str,
) -> None:
    app, _ = sender
    hostname = online_worker(server.base)
    page.goto(server.base + "/")
    count = page.locator("#problem-count")
    expect(count).to_have_text("0", timeout=15_000)  # sent on connecting
    page.evaluate("window.__sameDocument = true")

    tasks = app.tasks
    for result in [tasks["proj.add"].delay(n, 1) for n in range(8)]:
        result.get(timeout=20)  # something on the worker's chart
    later = tasks["proj.add"].apply_async((3, 4), countdown=120)  # scheduled, no problem
    wait_for(lambda: scheduled_by(server.base, later.id) == hostname, timeout=20)
    long = tasks["proj.limited"].delay(12.0)  # past its soft limit at 1 s, then 12 s more
    behind = [tasks["proj.add"].delay(n, n) for n in range(4)]
    stranded = tasks["proj.add"].apply_async((1, 2), queue=nobody)

    # late, held, waiting (3), waiting in nobody's queue and the queue itself
    page.wait_for_function(
        "() => Number(document.querySelector('#problem-count').textContent) >= 7",
        timeout=20_000,
    )
    assert page.evaluate("window.__sameDocument") is True  # counted in place, no reload

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(VIOLATIONS)
    other = context.new_page()
    errors: list[str] = []
    other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    other.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        response = other.goto(server.base + "/problems")
        assert response is not None and response.headers["content-security-policy"] == CSP
        for kind in ("late", "held", "waiting", "unconsumed"):
            expect(other.locator(f"tr.problem-{kind}").first).to_be_visible()
        late = other.locator(f'tr.problem-late:has(a[title="{long.id}"])')
        expect(late).to_contain_text("past its soft time limit")
        expect(other.locator("tr.problem-unconsumed")).to_contain_text(nobody)
        check_clean(other, errors)
        shot(other, "problems")

        response = other.goto(server.base + "/queues")
        assert response is not None and response.headers["content-security-policy"] == CSP
        expect(other.locator(f'tr.queue.problem[data-queue="{nobody}"]')).to_be_visible()
        expect(other.locator(f'tr.queue[data-queue="{scenario.queue}"]')).to_be_visible()
        expect(other.locator(f'#scheduled a[title="{later.id}"]')).to_be_visible()
        check_clean(other, errors)
        shot(other, "queues")

        response = other.goto(f"{server.base}/workers/{hostname}")
        assert response is not None and response.headers["content-security-policy"] == CSP
        expect(other.locator("#running")).to_contain_text("proj.limited")
        expect(other.locator("#held")).to_contain_text("proj.add")
        expect(other.locator(f'#scheduled a[title="{later.id}"]')).to_be_visible()
        check_clean(other, errors)
        shot(other, "worker")
    finally:
        context.close()

    # the long task ends, the tasks behind it run: only the queue nobody consumes is left
    for result in [long, *behind]:
        result.get(timeout=30)
    expect(count).to_have_text("2", timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True
    left = httpx.get(server.base + "/api/problems", timeout=5).json()["problems"]
    assert sorted(p["kind"] for p in left) == ["unconsumed", "waiting"], left
    assert {p["queue"] for p in left} == {nobody}
    assert stranded.id in {p["task_id"] for p in left}
