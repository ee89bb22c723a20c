"""The flow page in a real browser: all of it live, the graph's side panel, what nodes show."""

from __future__ import annotations

import uuid
from typing import Any

from celery import chain
from playwright.sync_api import Locator, Page, expect

from e2e.conftest import Server

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def box(locator: Locator) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, locator
    return found


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 1
        and inner["y"] >= outer["y"] - 1
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1
    )


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def all_nodes_in_view(page: Page) -> bool:
    frame = box(page.locator(".stg-root"))
    nodes = page.locator(".react-flow__node-stTask")
    return all(inside(box(nodes.nth(i)), frame) for i in range(nodes.count()))


def test_the_whole_flow_page_follows_the_flow_as_it_runs(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    """Opened by the "No task" watcher before anything ran; nothing reloads after that."""
    app, _ = sender
    slow, spawn, fail = app.tasks["proj.slow"], app.tasks["proj.spawn"], app.tasks["proj.fail"]
    first = uuid.uuid4().hex
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{server.base}/flows/{first}")
    expect(page.locator("h1")).to_contain_text("No task or group")
    chain(
        slow.si(1.0).set(task_id=first), spawn.si(6), slow.si(2.5), spawn.si(6), fail.si("end")
    ).apply_async()

    expect(page.locator("#flow-graph")).to_be_attached(timeout=15_000)
    page.evaluate("window.__sameDocument = true")
    graph = page.locator("#flow-graph")
    # the root, four planned links; then six children of the first spawn arrive
    expect(graph).to_have_attribute("data-graph-nodes", "11", timeout=15_000)
    expect(page.locator("main p.muted").first).to_contain_text("11 nodes, 10 edges")
    assert page.locator(".react-flow__node-stTask").count() == 11
    page.wait_for_timeout(400)  # the fit's animation, if any
    assert all_nodes_in_view(page), "new nodes are fitted into view"

    # the user pans: later nodes no longer move the view
    frame = box(page.locator(".stg-root"))
    viewport = page.locator(".react-flow__viewport")
    fitted = viewport.get_attribute("style")
    page.mouse.move(frame["x"] + frame["width"] - 20, frame["y"] + 20)  # empty pane: a corner
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] - 120, frame["y"] + 70, steps=5)
    page.mouse.up()
    moved = viewport.get_attribute("style")
    assert moved != fitted
    expect(graph).to_have_attribute("data-graph-nodes", "17", timeout=20_000)
    page.wait_for_timeout(600)
    assert viewport.get_attribute("style") == moved

    # header, critical path, waterfall and steps follow too
    expect(page.locator("main p.muted").first).to_contain_text("17 nodes, 16 edges")
    steps = page.locator("ul.tree > li")
    expect(steps).to_have_count(17)
    last = steps.filter(has_text="proj.fail")
    expect(last.locator(".badge.state")).to_contain_text("failure", timeout=20_000)
    expect(page.locator("ol.critical li")).not_to_have_count(0)
    expect(page.locator(".waterfall g.wf-row")).to_have_count(17)
    expect(page.locator("h1")).to_contain_text("proj.slow")
    expect(page.locator("h1 .badge.state")).to_contain_text("success")
    assert page.evaluate("window.__sameDocument") is True


def test_the_side_panel_shows_why_a_node_failed_and_what_it_was_given(
    page: Page, server: Server, sender: tuple[Any, Any], worker: None
) -> None:
    app, _ = sender
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/live" in r.url else None)
    failing = app.tasks["proj.fail"].delay(XSS)
    login = app.tasks["proj.login"].delay(
        "ada", "hunter2", options={"api_key": "k", "note": "n" * 5000}
    )
    assert login.get(timeout=20) == "welcome ada"

    page.goto(f"{server.base}/flows/{failing.id}")
    node = page.locator(f'.react-flow__node[data-id="{failing.id}"]')
    expect(node).to_contain_text("failure", timeout=20_000)
    node.click()
    panel = page.locator(".stg-panel")
    expect(panel).to_contain_text("ValueError")
    expect(panel).to_contain_text(f"broken link at {XSS}")  # the message, as text
    expect(panel.locator(".stg-value").first).to_contain_text(XSS)  # the args, as text
    assert panel.locator("img, script").count() == 0
    assert page.evaluate("window.__xss") is None

    # the "this task" tag leaves the node's title readable
    tag = node.locator(".stg-tag")
    expect(tag).to_be_visible()
    assert not overlap(box(tag), box(node.locator(".stg-title")))

    page.goto(f"{server.base}/flows/{login.id}")
    node = page.locator(f'.react-flow__node[data-id="{login.id}"]')
    expect(node).to_contain_text("success", timeout=20_000)
    node.click()
    panel = page.locator(".stg-panel")
    expect(panel).to_contain_text('"ada"')
    expect(panel).to_contain_text("welcome ada")  # the result
    expect(panel.locator(".stg-scrubbed")).to_have_count(2)  # the password and the api key
    for badge in panel.locator(".stg-scrubbed").all():
        assert "🔒" not in badge.inner_text()
        expect(badge.locator("svg")).to_have_count(1)
    expect(panel).to_contain_text("truncated: 5000 characters")
    assert dialogs == []
    # one event stream per flow page: the graph hears the page's own (htmx's). Two pages
    # make two streams, a reconnect on a loaded machine may add one; with the graph's own
    # stream beside htmx's there would be four at least.
    assert 2 <= len(streams) <= 3, streams
