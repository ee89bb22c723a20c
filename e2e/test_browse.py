"""The flows list and a task name's page in a real browser, fed by a real worker."""

from __future__ import annotations

import re
import uuid
from typing import Any

from celery import chain
from playwright.sync_api import Page, expect

from e2e.conftest import Server
from e2e.test_ui import shot
from tests.support import wait_for


def test_a_flow_opens_from_the_flows_page_and_a_task_name_shows_its_errors(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    add, fail, spawn = app.tasks["proj.add"], app.tasks["proj.fail"], app.tasks["proj.spawn"]
    first = uuid.uuid4().hex
    chain(add.si(1, 1).set(task_id=first), fail.si(7), add.si(2, 2)).apply_async()
    spawned = spawn.delay(3)
    spawned.get(timeout=20)
    failed = [fail.delay(i) for i in range(3)]
    for result in failed:
        result.get(timeout=20, propagate=False)

    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(server.base + "/flows")
    broken = page.locator(f"#flow-{first}")

    def listed() -> bool:
        page.reload()
        return (
            broken.count() == 1
            and broken.locator(".badge.outcome").text_content() == "broken"
            and page.locator(f"#flow-{spawned.id} .badge.outcome").count() == 1
            and page.locator(f"#flow-{spawned.id} .badge.outcome").text_content() == "succeeded"
        )

    try:
        wait_for(listed, timeout=45)
    except AssertionError as exc:
        raise AssertionError(page.locator("table.flows").inner_text()) from exc
    expect(broken).to_contain_text("proj.add")
    expect(page.locator(f"#flow-{spawned.id}")).to_contain_text("3 spawned tasks")
    shot(page, "flows")

    broken.locator("a.open-flow").click()
    expect(page).to_have_url(f"{server.base}/flows/{first}")
    expect(page.locator(".react-flow__node-stTask").first).to_be_visible(timeout=10_000)
    expect(page.locator("h1")).to_contain_text("proj.add")

    page.goto(f"{server.base}/names/proj.fail")
    expect(page.locator("h1")).to_have_text("proj.fail")
    groups = page.locator("tr.error-group")
    expect(groups).to_have_count(1)  # "broken link at 7", "at 0", ...: one error, four times
    group = groups.first
    expect(group.locator(".exc")).to_have_text("ValueError")
    expect(group.locator(".count")).to_have_text("4")
    expect(group.locator("svg.chart-spark rect")).to_have_count(1)
    group.locator("summary").click()
    expect(group.locator("pre.tb")).to_contain_text("ValueError: broken link at")
    expect(page.locator("#chart-throughput svg")).to_be_visible()
    shot(page, "task_name")

    group.locator("a.latest-failures").click()
    expect(page).to_have_url(re.compile(r"/executions\?name=proj.fail&state=FAILURE&q=ValueError$"))
    expect(page.locator("table.tasks tbody tr[id^=task-]")).to_have_count(4)
