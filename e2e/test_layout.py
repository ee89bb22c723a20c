"""How values and tables lay out in a real browser: readable at every depth and width."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from e2e.conftest import Server
from tests.support import wait_for

LINES = """(element) => {
  const range = document.createRange();
  range.selectNodeContents(element);
  return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
}"""


def test_nested_args_keep_their_size_and_each_index_its_own_line(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    echo = app.tasks["proj.echo"].delay([[1, [2, 3]], {"k": [[4]]}])
    echo.get(timeout=20)
    page.goto(f"{server.base}/tasks/{echo.id}")
    args = page.locator("div.value").filter(has=page.locator("h3", has_text="args"))
    wait_for(lambda: page.reload() and args.locator("li").count() > 0, timeout=20)
    sizes = args.locator(".v-num").evaluate_all(
        "(all) => all.map((e) => getComputedStyle(e).fontSize)"
    )
    assert len(sizes) == 4 and len(set(sizes)) == 1, sizes
    # each nested list starts below the index of the item that holds it: no "0. 0."
    tops = args.locator("li:has(> ol, > ul)").evaluate_all(
        """(all) => all.map((li) => [li.getBoundingClientRect().top,
                                   li.querySelector(':scope > ol > li, :scope > ul > li')
                                     .getBoundingClientRect().top])"""
    )
    assert tops, "nested lists found"
    for outer, inner in tops:
        assert inner > outer + 4, tops


def test_registry_numbers_stay_on_one_line_at_1440_px(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    app.tasks["proj.autoretry"].delay(1).get(timeout=20)
    app.tasks["proj.add"].delay(1, 2).get(timeout=20)
    app.tasks["proj.flaky"].delay(5).get(timeout=20)  # retried: "100.0 %"
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{server.base}/registry")
    table = page.locator("table.registry")
    expect(table).to_be_visible()
    heads = table.locator("thead th").all_inner_texts()
    numbers = [heads.index(name) for name in ("Failure", "Retried", "p50", "p95")]
    p50 = heads.index("p50")
    rows = table.locator("tbody tr")
    timed = rows.locator(f"td:nth-child({p50 + 1})").filter(has_not_text="—")
    wait_for(lambda: page.reload() and timed.count() >= 3, timeout=30)  # the registry is cached
    checked = 0
    for row in rows.all():
        cells = row.locator("td")
        for column in numbers:
            cell = cells.nth(column)
            if cell.inner_text().strip() == "—":
                continue
            checked += 1
            assert cell.evaluate(LINES) == 1, (cell.inner_text(), row.inner_text())
    assert checked >= 12
