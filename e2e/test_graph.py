"""The interactive flow graph in a real browser, on flows from a real worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from celery import chain, chord
from playwright.sync_api import Page, expect

import stemtrace
from e2e.conftest import Server
from stemtrace.core.events import encode_frame
from stemtrace.transports.redis import FRAME_FIELD
from tests.support import Scenario, wait_for


def once_stored(page: Page, url: str, selector: str, count: int) -> None:
    """The tree view is server-rendered: reload until the worker's events are in."""
    wait_for(lambda: page.goto(url) and page.locator(selector).count() == count, timeout=20)


def open_graph(page: Page, url: str) -> Any:
    page.goto(url)
    graph = page.locator("#flow-graph")
    expect(graph).to_have_attribute("data-graph-state", "ready", timeout=15_000)
    return graph


def test_chord_fan_out_and_fan_in(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    add, tsum = app.tasks["proj.add"], app.tasks["proj.tsum"]
    result = chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
    assert result.get(timeout=20) == 6
    once_stored(page, f"{server.base}/flows/{result.id}", ".tree .badge.state-success", 7)
    graph = open_graph(page, f"{server.base}/flows/{result.id}")
    expect(graph).to_have_attribute("data-graph-nodes", "5")  # chord node, 3 members, callback
    expect(page.locator(".react-flow__edge.kind-group")).to_have_count(3)
    expect(page.locator(".react-flow__edge.kind-chord")).to_have_count(3)
    expect(page.locator(f'.react-flow__node[data-id="{result.id}"]')).to_contain_text("proj.tsum")


def test_a_trace_draws_its_flows_under_one_trace_node(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    add, tsum = app.tasks["proj.add"], app.tasks["proj.tsum"]
    with stemtrace.trace("browser-trace"):
        fanned = chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
        single = add.delay(1, 1)
    assert fanned.get(timeout=20) == 6 and single.get(timeout=20) == 2
    once_stored(page, f"{server.base}/traces/browser-trace", ".trace-group tbody tr", 5)
    graph = open_graph(page, f"{server.base}/traces/browser-trace")
    # the trace, the chord node, 3 members, the callback, the single task
    expect(graph).to_have_attribute("data-graph-nodes", "7")
    top = page.locator('.react-flow__node[data-id="trace:browser-trace"]')
    expect(top).to_contain_text("trace")
    expect(top).to_contain_text("5 tasks")
    expect(page.locator(".waterfall g.wf-row")).to_have_count(5)


def test_a_broken_chain_shows_ghosts_and_a_node_opens_its_panel(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    add, fail = app.tasks["proj.add"], app.tasks["proj.fail"]
    broken = chain(add.s(1, 1), fail.s(), add.s(5), add.s(6)).apply_async()
    failing = broken.parent.parent.id
    once_stored(page, f"{server.base}/flows/{failing}", ".tree .ghost", 2)
    open_graph(page, f"{server.base}/flows/{failing}")
    expect(page.locator(".react-flow__node .stg-ghost")).to_have_count(2)
    node = page.locator(f'.react-flow__node[data-id="{failing}"]')
    expect(node).to_contain_text("failure")
    node.click()
    panel = page.locator(".stg-panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("proj.fail")
    panel.locator("a.stg-link").click()
    expect(page).to_have_url(f"{server.base}/tasks/{failing}")
    # keyboard: focus a node and open it with Enter
    open_graph(page, f"{server.base}/flows/{failing}")
    page.locator(f'.react-flow__node[data-id="{failing}"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator(".stg-panel")).to_be_visible()


def test_a_running_flow_updates_live(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    flow = chain(app.tasks["proj.slow"].s(2.0), app.tasks["proj.add"].s(1)).apply_async()
    first = flow.parent.id
    once_stored(page, f"{server.base}/tasks/{first}", "h1 .task-name", 1)
    open_graph(page, f"{server.base}/flows/{first}")
    page.evaluate("window.__sameDocument = true")
    node = page.locator(f'.react-flow__node[data-id="{first}"]')
    expect(node).to_contain_text("running", timeout=10_000)
    expect(node).to_contain_text("success", timeout=20_000)
    expect(page.locator(f'.react-flow__node[data-id="{flow.id}"]')).to_contain_text(
        "success", timeout=20_000
    )
    assert page.evaluate("window.__sameDocument") is True


def test_a_ten_thousand_member_group_stays_responsive(
    page: Page, server: Server, scenario: Scenario
) -> None:
    """Fed through the real stream and consumer, as a worker would have sent it."""
    parent, group_id, now = uuid.uuid4().hex, uuid.uuid4().hex, time.time()
    base = {"host": "celery@w", "pid": 1, "name": "proj.add"}
    events: list[dict[str, Any]] = [
        {**base, "kind": "succeeded", "eid": "p", "ts": now, "task_id": parent,
         "name": "proj.fanout", "result": None},
    ]  # fmt: skip
    for i in range(10_000):
        member = f"{group_id[:8]}-{i:05d}"
        common = {**base, "task_id": member, "group_id": group_id, "parent_id": parent}
        events.append(
            {
                **common,
                "kind": "sent",
                "eid": f"s{i}",
                "ts": now + 0.001,
                "group_index": i,
                "root_id": parent,
                "args": [i, i],
                "kwargs": {},
            }
        )
        events.append({**common, "kind": "succeeded", "eid": f"d{i}", "ts": now + 1,
                       "result": 2 * i, "runtime": 0.01})  # fmt: skip
    page.goto(f"{server.base}/tasks/{parent}")  # not there yet: the page waits for it
    expect(page.locator("h1")).to_contain_text("No task")
    client = redis.Redis.from_url(scenario.broker)
    for start in range(0, len(events), 500):
        client.xadd(scenario.stream, {FRAME_FIELD: encode_frame(events[start : start + 500])})
    client.close()

    expect(page.locator("h1")).to_contain_text("proj.fanout", timeout=30_000)
    graph = open_graph(page, f"{server.base}/flows/{parent}")
    expect(graph).to_have_attribute("data-graph-nodes", "2")  # the parent and one group node
    group = page.locator(f'.react-flow__node[data-id="group:{group_id}"]')
    expect(group).to_contain_text("10,000")
    group.click()
    page.locator(".stg-expand").first.click()
    expect(graph).to_have_attribute("data-graph-nodes", "102", timeout=15_000)
    page.mouse.wheel(0, 400)  # still answers to zooming after the expansion
    expect(graph).to_have_attribute("data-graph-state", "ready")
