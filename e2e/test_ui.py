"""What a person sees in the browser: live updates, retries, traces, mounting, auth, XSS."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from celery import chord
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

import stemtrace
from e2e.conftest import SCREENSHOTS, Server, start_server
from tests.support import Scenario, free_port, stop_process, wait_for

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def shot(page: Page, name: str) -> None:
    """Screenshots for the README, refreshed by every run of the suite."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_new_task_appears_and_turns_to_success_without_reload(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    page.goto(server.base + "/executions")
    page.evaluate("window.__sameDocument = true")
    slow = app.tasks["proj.slow"].delay(1.5)
    row = page.locator(f"#task-{slow.id}")
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator(".badge.state")).to_have_text("▶ started", timeout=10_000)
    expect(row.locator(".badge.state")).to_have_text("✓ success", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # updated in place, no reload


def test_retries_trace_flow_and_pages(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    add, tsum = app.tasks["proj.add"], app.tasks["proj.tsum"]
    with stemtrace.trace("checkout-42"):
        flaky = app.tasks["proj.flaky"].delay(5)
        fanned = chord([add.s(i, i) for i in range(4)], tsum.s()).apply_async()
        app.tasks["proj.login"].delay("ada", "hunter2", options={"api_key": "k-1"})
    app.tasks["proj.spawn"].delay(2)
    assert flaky.get(timeout=20) == 5 and fanned.get(timeout=20) == 12

    page.goto(f"{server.base}/tasks/{flaky.id}")
    expect(page.locator("table.attempts tbody tr")).to_have_count(3, timeout=15_000)
    page.reload()
    attempts = page.locator("table.attempts tbody tr")
    expect(attempts.nth(0)).to_contain_text("ConnectionError: attempt 1 failed")
    expect(attempts.nth(1)).to_contain_text("ConnectionError: attempt 2 failed")
    expect(attempts.nth(2)).to_contain_text("success")
    attempts.nth(0).locator("summary").click()
    expect(attempts.nth(0).locator("pre.tb")).to_contain_text("Traceback (most recent call last)")
    # queued, waiting in worker, then running / waiting for retry three times
    expect(page.locator("svg.timeline rect")).to_have_count(7)
    shot(page, "task")

    page.goto(f"{server.base}/traces/checkout-42")
    rows = page.locator("section.trace-group tbody tr")
    wait_for(lambda: page.reload() or rows.count() == 7, timeout=20)  # flaky + 4 + callback + login
    shot(page, "trace")

    page.goto(f"{server.base}/flows/{fanned.id}")
    # the chord node, 4 members, and the callback under each member (listed once in full)
    expect(page.locator(".tree li")).to_have_count(9)
    expect(page.get_by_text("(shown above)")).to_have_count(3)
    expect(page.locator(".tree .edge-chord")).to_have_count(4)
    shot(page, "flow")

    page.goto(server.base + "/executions")
    expect(page.locator("table.tasks tbody tr")).to_have_count(10, timeout=10_000)
    shot(page, "executions")
    page.goto(server.base + "/registry")
    expect(page.locator("table.registry")).to_contain_text("proj.flaky")
    shot(page, "registry")
    page.goto(server.base + "/workers")
    expect(page.locator("table.workers")).to_contain_text("online")
    shot(page, "workers")


def test_hostile_args_do_not_execute(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    echo = app.tasks["proj.echo"].delay({"payload": XSS, XSS: [XSS]})
    failing = app.tasks["proj.fail"].delay(XSS)
    echo.get(timeout=20)
    for url in ("/", "/executions", f"/tasks/{echo.id}", f"/tasks/{failing.id}",
                f"/flows/{echo.id}", "/executions?q=" + "%3Cscript%3E"):  # fmt: skip
        page.goto(server.base + url)
        page.wait_for_timeout(300)
        if url.startswith("/tasks/"):
            expect(page.locator("main")).to_contain_text("<img src=x", timeout=10_000)
        assert page.evaluate("window.__xss") is None
        # the flow page's JSON data block is the one script element allowed in main
        assert page.locator('main img, main script:not([type="application/json"])').count() == 0
    assert dialogs == []


def test_mounted_under_a_prefix(
    page: Page, scenario: Scenario, sender: tuple[Any, Any], worker: None, tmp_path: Path
) -> None:
    app, _ = sender
    port = free_port()
    env = {"STEMTRACE_BROKER": scenario.broker, "STEMTRACE_STREAM": scenario.stream,
           "STEMTRACE_DB": str(tmp_path / "host.db"), "HOSTAPP_PREFIX": "/stemtrace"}  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "e2e.hostapp:app", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    host = start_server(command, env, f"http://127.0.0.1:{port}/stemtrace/api/health")
    try:
        page.goto(f"http://127.0.0.1:{port}/stemtrace/executions")
        result = app.tasks["proj.add"].delay(2, 3)
        row = page.locator(f"#task-{result.id}")
        expect(row.locator(".badge.state")).to_have_text("✓ success", timeout=15_000)
        row.locator("a.mono").click()
        expect(page).to_have_url(f"http://127.0.0.1:{port}/stemtrace/tasks/{result.id}")
        expect(page.locator("h1")).to_contain_text("proj.add")
        page.get_by_role("link", name="Registry").click()
        expect(page).to_have_url(f"http://127.0.0.1:{port}/stemtrace/registry")
        css = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert css == "rgb(247, 247, 245)"  # the stylesheet loaded under the prefix
    finally:
        stop_process(host.process)


def test_auth_blocks_an_anonymous_browser(
    page: Page, scenario: Scenario, tmp_path: Path, browser: Any
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "stemtrace.cli", "run", "--port", str(port),
               "--broker", scenario.broker, "--stream", scenario.stream,
               "--db", str(tmp_path / "auth.db"), "--auth-user", "ops",
               "--auth-password", "s3cret-pass", "--log-level", "warning"]  # fmt: skip
    protected = start_server(
        command, {}, f"http://127.0.0.1:{port}/api/health", auth=("ops", "s3cret-pass")
    )
    try:
        try:
            response = page.goto(f"http://127.0.0.1:{port}/")
        except PlaywrightError as exc:  # headless Chromium refuses the basic-auth challenge
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        else:
            assert response is not None and response.status == 401
        assert page.locator("table.tasks").count() == 0
        context = browser.new_context(
            http_credentials={"username": "ops", "password": "s3cret-pass"}
        )
        allowed = context.new_page()
        response = allowed.goto(f"http://127.0.0.1:{port}/")
        assert response is not None and response.status == 200
        expect(allowed.locator("h1")).to_have_text("Overview")
        context.close()
    finally:
        stop_process(protected.process)
