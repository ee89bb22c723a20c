"""The flow page: what it is named, and the blocks it refreshes live (BeautifulSoup over ASGI)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from stemtrace.core import states
from tests.factories import lifecycle, link
from tests.site import Site, db_path, fill, htmx, label, one, page, site, text, vary

__all__ = ["db_path", "site"]  # fixtures

ROOT_ID = "7c0ffee0-0000-4000-8000-000000000001"
CHILD = "7c0ffee0-0000-4000-8000-000000000002"
LATER = "7c0ffee0-0000-4000-8000-000000000003"


def test_the_flow_page_is_named_for_its_root_with_its_state_and_trace(site: Site) -> None:
    t = time.time() - 60
    client = site(lifecycle(ROOT_ID, "proj.checkout", t, "FAILURE", trace_id="order-7"))
    soup = page(client, f"/flows/{ROOT_ID}")
    assert text(soup.title).startswith("proj.checkout")
    heading = one(soup, "h1")
    assert label(one(heading, ".badge.state")) == "failure"
    assert "proj.checkout" in text(heading)
    head = one(soup, "#flow-head")
    assert [a["href"] for a in head.select("a[href^='/traces/']")] == ["/traces/order-7"]


@pytest.mark.parametrize("path", [f"/flows/{ROOT_ID}", "/traces/order-7"])
def test_the_graph_gets_the_states_table_from_the_page(site: Site, path: str) -> None:
    """The island draws states from core/states.LOOKS, carried as JSON: no copy of its own."""
    client = site(lifecycle(ROOT_ID, "proj.checkout", time.time() - 60, trace_id="order-7"))
    soup = page(client, path)
    one(soup, "#flow-graph")
    carried = one(soup, "script#state-looks")
    assert carried["type"] == "application/json"
    assert json.loads(text(carried)) == {state: list(look) for state, look in states.LOOKS.items()}


def test_the_flow_page_refreshes_its_header_critical_path_waterfall_and_steps(
    site: Site, db_path: Path
) -> None:
    t = time.time() - 60
    client = site(
        lifecycle(ROOT_ID, "proj.first", t, "STARTED", chain=[link(CHILD, "proj.second")])
    )
    soup = page(client, f"/flows/{ROOT_ID}")
    live = one(soup, "#flow-live")
    assert live["hx-ext"] == "sse"
    assert live["sse-connect"] == "/live"
    assert live["hx-get"] == f"/flows/{ROOT_ID}"
    assert {t.strip() for t in str(live["hx-trigger"]).split(",")} == {"sse:ready", "sse:changed"}
    assert live["hx-swap"] == "none"  # the blocks come out of band; the graph stays put
    # the graph hears the same stream: one connection per page, not two
    assert one(live, "#flow-graph")["data-live-source"] == "flow-live"
    assert text(one(soup, "#flow-head p")).startswith("2 nodes, 1 edge.")

    # the flow moves on: the first task ends, the second runs and fails, a third is spawned
    fill(
        db_path,
        [
            *lifecycle(ROOT_ID, "proj.first", t, chain=[link(CHILD, "proj.second")]),
            *lifecycle(CHILD, "proj.second", t + 2, "FAILURE", parent_id=ROOT_ID, root_id=ROOT_ID),
            *lifecycle(LATER, "proj.third", t + 3, parent_id=CHILD, root_id=ROOT_ID),
        ],
    )
    response = client.get(str(live["hx-get"]), headers=htmx("flow-live"))
    assert response.status_code == 200
    assert "hx-request" in vary(response)
    blocks = BeautifulSoup(response.text, "html.parser")
    assert blocks.find("html") is None and blocks.select("#flow-graph, #flow-data") == []
    head, body = one(blocks, "#flow-head"), one(blocks, "#flow-body")
    assert head["hx-swap-oob"] == body["hx-swap-oob"] == "true"
    assert label(one(head, "h1 .badge.state")) == "success"
    assert text(one(head, "p")).startswith("3 nodes, 2 edges.")
    steps = body.select("ul.tree > li")
    assert [label(one(li, ".badge.state")) for li in steps] == ["success", "failure", "success"]
    assert body.select("ol.critical li")
    assert len(body.select(".waterfall g.wf-row")) == 3
