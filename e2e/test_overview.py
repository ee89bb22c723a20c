"""The overview in a real browser: it fills in live, and a failed bar opens those failures."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, expect

from e2e.conftest import Server
from e2e.test_ui import shot
from tests.support import wait_for


def test_the_overview_fills_in_live_and_a_failed_bar_opens_its_failures(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.goto(server.base + "/")
    expect(page.locator("section.empty")).to_contain_text("No tasks yet")
    page.evaluate("window.__sameDocument = true")

    add, fail, slow = app.tasks["proj.add"], app.tasks["proj.fail"], app.tasks["proj.slow"]
    done = [add.delay(i, i) for i in range(12)] + [slow.delay(0.3 + i / 10) for i in range(4)]
    failed = [fail.delay(i) for i in range(3)]
    for result in done:
        result.get(timeout=30)
    for result in failed:
        result.get(timeout=30, propagate=False)
    failed_ids = {r.id for r in failed}

    # the empty state turns into the charts by itself, then they follow the tasks (every 5 s)
    expect(page.locator("#chart-throughput svg")).to_be_visible(timeout=15_000)
    bars = page.locator("#chart-throughput .chart-bad a")

    def failed_counted() -> int:
        titles = bars.locator("title").all_text_contents()
        return sum(int(m.group(1)) for t in titles if (m := re.search(r" · (\d+) tasks", t)))

    wait_for(lambda: failed_counted() == 3, timeout=30)
    assert page.evaluate("window.__sameDocument") is True  # redrawn in place, no reload
    expect(page.locator("#failing tbody tr").first).to_contain_text("proj.fail")
    expect(page.locator("#busiest tbody")).to_contain_text("proj.add")
    expect(page.locator("#total-failed p")).to_have_text("3")
    shot(page, "overview")

    first = bars.first
    found = re.search(r" · (\d+) tasks", first.locator("title").text_content() or "")
    assert found is not None
    count = int(found.group(1))
    first.locator("rect").click()
    expect(page).to_have_url(re.compile(r"/executions\?state=FAILURE&since=\d+&until=\d+$"))
    rows = page.locator("table.tasks tbody tr[id^=task-]")
    expect(rows).to_have_count(count)
    ids = rows.evaluate_all("(rs) => rs.map((r) => r.id)")
    assert {str(i).removeprefix("task-") for i in ids} <= failed_ids
    for badge in rows.locator(".badge.state").all():
        expect(badge).to_contain_text("failure")
