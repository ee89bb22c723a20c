"""The web UI through ASGI: every page parsed with BeautifulSoup, standalone and mounted.

No Redis and no Celery: as in ``test_api``, each test writes the events a
capture would have published through the single-writer ``Ingestor`` into a
store file under ``tmp_path``, then builds a fresh app on it
(``consumer=False``). The live stream is never opened over HTTP (it never
ends); :class:`Broadcaster` is tested directly with asyncio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest
from bs4 import BeautifulSoup, Tag, XMLParsedAsHTMLWarning
from fastapi import Depends, HTTPException, Request
from starlette.testclient import TestClient

from stemtrace.core import buckets, states
from stemtrace.core.events import Event
from stemtrace.server import render
from stemtrace.server.live import Broadcaster
from tests.factories import (
    ADD_CHILD,
    ADD_OLD,
    ADD_RUNNING,
    CHARGE,
    CHORD_GROUP,
    COLLECT,
    EMAIL_RETRY,
    EMAIL_REVOKED,
    FANOUT,
    FETCH,
    HEADER,
    NEWEST_FIRST,
    PARSE,
    STEP,
    TIE_A,
    TIE_B,
    TIE_C,
    W1,
    W2,
    Task,
    big_group,
    catalog,
    chain_events,
    chord_events,
    exception,
    lifecycle,
    registry_entry,
    retried_twice,
    worker_event,
)
from tests.site import (
    Site,
    assert_no_active_content,
    csp_of,
    html,
    htmx,
    label,
    links,
    one,
    page,
    row_ids,
    serve,
    text,
    urls_in,
    value_box,
    vary,
    writes,
)

STATIC = Path(__file__).resolve().parent.parent / "stemtrace" / "static"


# -- building apps --------------------------------------------------------------------


# -- reading pages --------------------------------------------------------------------


# -- data sets ------------------------------------------------------------------------

STATE_OF = {
    ADD_OLD: "SUCCESS",
    CHARGE: "FAILURE",
    ADD_RUNNING: "STARTED",
    TIE_A: "SUCCESS",
    TIE_B: "SUCCESS",
    TIE_C: "SUCCESS",
    EMAIL_RETRY: "RETRY",
    EMAIL_REVOKED: "REVOKED",
    ADD_CHILD: "PENDING",
}

ALIVE, LOST, GONE = "celery@alive", "celery@lost", "celery@gone"
RUNNING_ON_ALIVE = "e1000000-0000-4000-8000-000000000001"


def online(worker: str, ts: float, freq: float, tasks: list[dict[str, Any]]) -> Event:
    return worker_event(
        "worker_online",
        worker,
        ts,
        sw_ver="5.4.0",
        pool="prefork",
        concurrency=4,
        queues=["celery", "emails"],
        freq=freq,
        tasks=tasks,
    )


def fleet(now: float) -> list[Event]:
    """One worker online running a task, one lost (silent), one shut down."""
    return [
        online(ALIVE, now - 30, 2.0, [registry_entry("proj.tasks.add", signature="(x, y)")]),
        worker_event(
            "worker_heartbeat", ALIVE, now - 2, freq=2.0, active=1, loadavg=[0.5, 0.4, 0.3]
        ),
        *lifecycle(RUNNING_ON_ALIVE, "proj.tasks.crunch", now - 20, "STARTED", worker=ALIVE),
        online(LOST, now - 600, 2.0, []),
        online(GONE, now - 100, 2.0, []),
        worker_event("worker_offline", GONE, now - 50),
    ]


def everything(now: float) -> list[Event]:
    """Every kind of page has something to show: list, retries, chain, chord, workers."""
    return [
        *catalog(now),
        *retried_twice(now - 100),
        *chain_events(now - 60, "FAILURE"),
        *chord_events(now - 50),
        *fleet(now),
    ]


# -- executions -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing(module_target: str) -> Iterator[TestClient]:
    """The catalog, one app for every test that only reads it (as Datasette shares
    its read-only test app): it saves building an app and a store per test (one of
    each per backend)."""
    with ExitStack() as stack:
        yield serve(stack, module_target, catalog(time.time()))


def test_executions_list_rows_badges_and_links(listing: TestClient) -> None:
    response = listing.get("/executions")
    soup = html(response)
    assert text(soup.h1) == "Executions"
    assert row_ids(soup) == NEWEST_FIRST
    for task_id in NEWEST_FIRST:
        row = one(soup, f"tr#task-{task_id}")
        state = STATE_OF[task_id]
        badge = one(row, ".badge.state")
        assert badge["title"] == state
        assert label(badge) == state.lower()  # words, not only a colour
        assert f"/tasks/{task_id}" in links(row)
    charge = one(soup, f"tr#task-{CHARGE}")
    assert links(charge)[0] == "/names/proj.tasks.charge"
    assert text(one(charge, "td.err .exc")) == "proj.errors.PaymentDeclined"
    assert "insufficient funds" in text(one(charge, "td.err"))
    assert W2 in [text(td) for td in charge.find_all("td")]
    retry = one(soup, f"tr#task-{EMAIL_RETRY}")
    assert text(retry.find_all("td")[7]) == "1"  # retries column
    # every state can be picked, each shown with its word
    boxes = soup.select("fieldset.states label")
    assert [str(one(b, "input")["value"]) for b in boxes] == [
        "PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED",
    ]  # fmt: skip
    assert [label(one(b, ".badge")) for b in boxes][-1] == "rejected"
    assert soup.select("input[name=state][checked]") == []
    assert [str(o["value"]) for o in soup.select("#worker-names option")] == [W1, W2]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": "FAILURE"}, [CHARGE]),
        ({"state": ["FAILURE", "REVOKED"]}, [EMAIL_REVOKED, CHARGE]),
        ({"state": ["pending", "STARTED", "RETRY"]}, [ADD_CHILD, EMAIL_RETRY, ADD_RUNNING]),
        ({"name": "proj.tasks.add"}, [ADD_CHILD, ADD_RUNNING, ADD_OLD]),
        ({"worker": W2}, [EMAIL_REVOKED, EMAIL_RETRY, CHARGE]),
        ({"trace_id": "trace-shop"}, [ADD_CHILD, ADD_OLD]),
        ({"since": "1h"}, NEWEST_FIRST[:-1]),
        ({"until": "45m"}, [CHARGE, ADD_OLD]),
        ({"since": "40m", "until": "12m"}, [TIE_C, TIE_B, TIE_A, ADD_RUNNING]),
        ({"q": "cus_ALICE"}, [CHARGE]),
        ({"q": "bob@example"}, [EMAIL_RETRY]),
        ({"name": "proj.tasks.ping", "state": "SUCCESS", "since": "1h"}, [TIE_C, TIE_B, TIE_A]),
    ],
)
def test_each_filter_narrows_the_rows_and_stays_in_the_form(
    listing: TestClient, query: dict[str, Any], expected: list[str]
) -> None:
    soup = page(listing, "/executions", **query)
    assert row_ids(soup) == expected
    chosen = query.get("state", [])
    chosen = [chosen] if isinstance(chosen, str) else chosen
    checked = [str(box["value"]) for box in soup.select("input[name=state][checked]")]
    assert checked == [s for s in states.ALL if s in {c.upper() for c in chosen}]
    form = one(soup, "form.filters")
    for field in ("name", "worker", "trace_id", "since", "until", "q"):
        assert one(form, f"input[name={field}]")["value"] == query.get(field, "")
    if "q" in query:  # the search box in the header shows the search too
        assert one(soup, "form.search input[name=q]")["value"] == query["q"]
    # the live refresh asks for the same filtered rows
    live = parse_qs(urlsplit(str(one(soup, "tbody#rows")["hx-get"])).query)
    for field, value in query.items():
        assert live[field] == ([value] if isinstance(value, str) else value)
    partial = BeautifulSoup(
        listing.get("/executions", params=query, headers=htmx("rows")).text, "html.parser"
    )
    assert row_ids(partial) == expected


def test_filters_matching_nothing_say_so(listing: TestClient) -> None:
    soup = page(listing, "/executions", state="REJECTED")
    assert row_ids(soup) == []
    assert text(one(soup, "td.none")) == "No executions match these filters."
    assert soup.select("section.empty") == []


def test_older_link_carries_a_cursor_and_pages_continue_without_repeats(
    listing: TestClient,
) -> None:
    seen: list[str] = []
    url = "/executions?limit=4"
    pages = 0
    while url:
        soup = page(listing, url)
        pages += 1
        rows = row_ids(soup)
        assert 0 < len(rows) <= 4
        seen += rows
        older = soup.select("nav.pager a[rel=next]")
        if pages > 1:  # older pages are not live and lead back to the newest
            assert not one(soup, "tbody#rows").has_attr("sse-connect")
            assert one(soup, "nav.pager a:not([rel])")["href"] == "/executions?limit=4"
        else:
            assert one(soup, "tbody#rows")["sse-connect"] == "/live"
        if not older:
            break
        assert text(older[0]) == "Older →"
        url = str(older[0]["href"])
        found = parse_qs(urlsplit(url).query)
        assert found["limit"] == ["4"]
        assert found["cursor"][0]
        assert pages < 10
    assert seen == NEWEST_FIRST
    assert pages == 3


def test_older_link_keeps_the_filters(listing: TestClient) -> None:
    soup = page(listing, "/executions", state="SUCCESS", limit=2)
    assert row_ids(soup) == [TIE_C, TIE_B]
    older = str(one(soup, "nav.pager a[rel=next]")["href"])
    assert parse_qs(urlsplit(older).query)["state"] == ["SUCCESS"]
    second = page(listing, older)
    assert row_ids(second) == [TIE_A, ADD_OLD]
    assert second.select("nav.pager a[rel=next]") == []
    assert [str(b["value"]) for b in second.select("input[name=state][checked]")] == ["SUCCESS"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "garbage"}, "since must be epoch seconds, an ISO-8601 time or an age"),
        ({"until": "2h ago"}, "until must be epoch seconds"),
        ({"since": "nan"}, "since must be a finite time"),
        ({"state": "bogus"}, "unknown state 'bogus'; use one of PENDING"),
        ({"state": ["SUCCESS", "DONE"]}, "unknown state 'DONE'"),
        ({"cursor": "not-a-cursor"}, "invalid cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'{"a": 1}').decode()}, "invalid cursor"),
    ],
)
def test_bad_filter_is_a_422_page_with_the_reason(
    listing: TestClient, query: dict[str, Any], message: str
) -> None:
    response = listing.get("/executions", params=query)
    soup = html(response, 422)
    assert message in text(one(soup, "p.error[role=alert]"))
    assert row_ids(soup) == []
    one(soup, "form.filters")  # the user can correct the filter
    for field in ("since", "until"):
        if field in query:
            assert one(soup, f"form.filters input[name={field}]")["value"] == query[field]
    partial = listing.get("/executions", params=query, headers=htmx("rows"))
    assert partial.status_code == 422
    assert row_ids(BeautifulSoup(partial.text, "html.parser")) == []


def test_empty_store_shows_how_to_start(site: Site) -> None:
    client = site([])
    soup = page(client, "/executions")
    empty = one(soup, "section.empty")
    snippet = text(one(empty, "pre code"))
    assert "import stemtrace" in snippet
    assert "stemtrace.init(app)" in snippet
    assert soup.select("table.tasks") == []
    # a filter on an empty store is not a first start: it says nothing matched
    filtered = page(client, "/executions", name="proj.tasks.add")
    assert filtered.select("section.empty") == []
    assert text(one(filtered, "td.none")) == "No executions match these filters."
    assert "init(app)" in text(one(page(client, "/registry"), "section.empty"))
    assert "init(app)" in text(one(page(client, "/workers"), "section.empty"))


# -- one task -------------------------------------------------------------------------


def facts(soup: BeautifulSoup) -> dict[str, Tag]:
    dl = one(soup, "dl.facts")
    return {text(dt): dt.find_next_sibling("dd") for dt in dl.find_all("dt")}


def test_task_page_of_a_task_retried_twice(site: Site) -> None:
    client = site(retried_twice(time.time() - 100))
    soup = page(client, f"/tasks/{FETCH}")
    head = one(soup, "header.task-head")
    assert label(one(head, "h1 .badge.state")) == "success"
    assert text(one(head, ".task-name")) == "proj.tasks.fetch"
    fact = facts(soup)
    assert text(one(fact["Id"], "code")) == FETCH
    assert one(fact["Id"], "button.copy")["data-copy"] == FETCH
    assert text(fact["Worker"]) == W1
    assert links(fact["Trace"]) == ["/traces/trace-feed"]
    assert text(fact["Trace"]) == "trace-feed"
    assert links(fact["Flow"]) == [f"/flows/{FETCH}"]
    assert text(fact["Retries"]) == "2"

    bars = soup.select("svg.timeline rect")
    assert [r["class"] for r in bars] == [
        ["ph-pending"], ["ph-received"], ["ph-started"], ["ph-retry"],
        ["ph-started"], ["ph-retry"], ["ph-started"],
    ]  # fmt: skip
    assert sum(float(r["width"]) for r in bars) == pytest.approx(1000, abs=0.1)
    assert [text(r.title) for r in bars][:3] == ["queued: 200 ms", "waiting in worker: 300 ms",
                                                  "running: 1.00 s"]  # fmt: skip
    phases = [[text(td) for td in tr.find_all("td")] for tr in soup.select("table.phases tbody tr")]
    assert [p[0] for p in phases] == [
        "queued", "waiting in worker", "running", "waiting for retry",
        "running", "waiting for retry", "running", "succeeded",
    ]  # fmt: skip
    assert [p[2] for p in phases] == [
        "200 ms", "300 ms", "1.00 s", "2.10 s", "1.00 s", "3.50 s", "1.00 s", "—",
    ]  # fmt: skip
    totals = text(one(soup, "p.totals"))
    assert "running: 3.00 s" in totals
    assert "waiting for retry: 5.60 s" in totals

    attempts = soup.select("table.attempts tbody tr")
    assert len(attempts) == 3
    cells = [tr.find_all("td", recursive=False) for tr in attempts]
    assert [text(c[0]) for c in cells] == ["1", "2", "3"]
    assert [label(one(c[1], ".badge")) for c in cells] == ["retry", "retry", "success"]
    for number, cell in enumerate(cells[:2], start=1):
        exc = cell[5]
        assert text(one(exc, "strong.exc")) == "requests.exceptions.Timeout"
        assert f"read timed out (attempt {number})" in text(exc)
        details = one(exc, "details")
        assert text(details.summary) == "Traceback"
        assert (
            one(details, "pre.tb")
            .get_text()
            .endswith(f"Timeout: read timed out (attempt {number})\n")
        )
        assert "next attempt due" in text(one(exc, "div.muted"))
    assert text(cells[2][5]) == ""
    assert cells[2][5].find("details") is None
    assert soup.select("section[aria-labelledby=exc-h]") == []  # it did not fail in the end

    args = value_box(soup, "args")
    assert [text(s) for s in args.select("span.v-str")] == ['"https://example.com/feed"']
    kwargs = value_box(soup, "kwargs")
    assert text(one(kwargs, "li")) == "timeout: 5"
    result = value_box(soup, "result")
    assert [text(li) for li in result.select("ul.v-map > li")] == ["status: 200", "items: 3"]

    family = one(soup, "section[aria-labelledby=family-h]")
    assert "none (a root)" in text(family)
    [child] = family.select("ul.children li")
    assert links(child) == [f"/tasks/{PARSE}"]
    assert "proj.tasks.parse" in text(child)
    assert label(one(child, ".badge")) == "success"
    # and the child points back at its parent and root
    child_page = page(client, f"/tasks/{PARSE}")
    assert links(one(child_page, "section[aria-labelledby=family-h]").p) == [
        f"/tasks/{FETCH}",
        f"/tasks/{FETCH}",
    ]
    assert "No children." in text(one(child_page, "section[aria-labelledby=family-h]"))


def test_failed_task_page_shows_the_failure(site: Site) -> None:
    t = time.time() - 50
    client = site(
        lifecycle(CHARGE, "proj.tasks.charge", t, "FAILURE", exc=("proj.errors.Declined", "no"))
    )
    soup = page(client, f"/tasks/{CHARGE}")
    assert label(one(soup, "h1 .badge")) == "failure"
    failure = one(soup, "section[aria-labelledby=exc-h]")
    assert text(one(failure, "strong.exc")) == "proj.errors.Declined"
    assert one(failure, "pre.tb").get_text().startswith("Traceback (most recent call last):")
    assert text(value_box(soup, "result")) == "result—"  # no result for a failure
    assert soup.select("table.attempts tbody tr details pre.tb")


SIGNUP = "f0000000-0000-4000-8000-000000000001"
SCRUBBED = {"__stemtrace__": "scrubbed"}


def test_scrubbed_and_truncated_values_are_visible_badges(site: Site) -> None:
    cut = {"__stemtrace__": "truncated", "preview": "x" * 40, "length": 100_000}
    client = site(
        lifecycle(
            SIGNUP,
            "proj.tasks.signup",
            time.time() - 30,
            args=["alice", cut],
            kwargs={"password": SCRUBBED, "plan": "pro"},
            result={"token": SCRUBBED, "log": {**cut, "length": 250_000}},
        )
    )
    soup = page(client, f"/tasks/{SIGNUP}")
    args = value_box(soup, "args")
    [first, second] = args.select("ol.v-list > li")
    assert text(first) == '"alice"'
    assert text(one(second, ".badge.cut")) == "truncated: 100000 characters"
    assert text(one(second, "span.v-str")) == "x" * 40 + "…"
    kwargs = {text(one(li, ".v-key")): li for li in value_box(soup, "kwargs").select("li")}
    assert set(kwargs) == {"password", "plan"}
    assert text(one(kwargs["password"], ".badge.scrubbed")).endswith("scrubbed")
    assert "__stemtrace__" not in text(value_box(soup, "kwargs"))
    assert text(kwargs["plan"]) == 'plan: "pro"'
    result = value_box(soup, "result")
    assert text(one(result, ".badge.scrubbed")).endswith("scrubbed")
    assert text(one(result, ".badge.cut")) == "truncated: 250000 characters"


def test_running_task_page_is_live_and_a_finished_one_is_not(site: Site) -> None:
    now = time.time()
    client = site(catalog(now))
    running = one(page(client, f"/tasks/{ADD_RUNNING}"), "#task-live")
    assert running["hx-ext"] == "sse"
    assert running["sse-connect"] == f"/live?task={ADD_RUNNING}"
    assert running["hx-get"] == f"/tasks/{ADD_RUNNING}"
    # refreshed on each change, and once on every (re)connection for what it missed
    assert {t.strip() for t in str(running["hx-trigger"]).split(",")} == {
        "sse:ready",
        "sse:changed",
    }
    assert running["hx-swap"] == "innerHTML"
    refresh = client.get(str(running["hx-get"]), headers=htmx("task-live"))
    block = BeautifulSoup(refresh.text, "html.parser")
    assert block.find("html") is None
    assert text(one(block, "header.task-head .task-name")) == "proj.tasks.add"
    [phase] = [tr for tr in running.select("table.phases tbody tr") if "so far" in text(tr)]
    assert text(phase).startswith("running")
    for finished in (ADD_OLD, CHARGE, EMAIL_REVOKED):
        live = one(page(client, f"/tasks/{finished}"), "#task-live")
        for attribute in ("hx-ext", "sse-connect", "hx-get", "hx-trigger"):
            assert not live.has_attr(attribute), (finished, attribute)


# -- flows and traces -----------------------------------------------------------------


def tree(soup: BeautifulSoup) -> list[Tag]:
    return one(soup, "ul.tree").find_all("li", recursive=False)


def edge(item: Tag) -> str | None:
    found = item.select("span.edge")
    return text(found[0]) if found else None


def test_flow_of_a_broken_chain_shows_the_links_that_never_ran(site: Site) -> None:
    client = site(chain_events(time.time() - 60, "FAILURE"))
    soup = page(client, f"/flows/{STEP[2]}")
    items = tree(soup)
    assert [edge(i) for i in items] == [None, "chain", "chain", "chain"]
    assert [i["class"][0] for i in items] == ["depth-0", "depth-1", "depth-2", "depth-3"]
    assert [label(one(i, ".badge.state")) for i in items] == [
        "success", "failure", "not run", "not run",
    ]  # fmt: skip
    assert links(items[0]) == [f"/tasks/{STEP[1]}"]
    assert links(items[1]) == [f"/tasks/{STEP[2]}"]
    assert "current" in items[1]["class"]  # the task the flow was asked for
    for item, name in zip(items[2:], ("proj.tasks.step3", "proj.tasks.step4"), strict=True):
        assert text(one(item, "span.ghost")) == name
        assert links(item) == []  # never ran: nothing to open
    assert ["on-critical" in i["class"] for i in items] == [True, True, False, False]

    summary = soup.h1.find_next_sibling("p")
    assert text(summary).startswith("4 nodes, 3 edges.")
    dot = client.get(links(summary)[0])
    assert dot.status_code == 200
    assert dot.headers["content-type"].startswith("text/vnd.graphviz")
    assert dot.text.startswith("digraph flow {")

    critical = one(soup, "section[aria-labelledby=critical-h]")
    assert "2.70 s from the first task sent to the last one done" in text(critical.h2)
    assert [links(li) for li in critical.select("ol.critical li")] == [
        [f"/tasks/{STEP[1]}"],
        [f"/tasks/{STEP[2]}"],
    ]
    bars = soup.select("div.waterfall svg g.wf-row")
    assert [text(one(g, "text.wf-name")) for g in bars] == ["proj.tasks.step1", "proj.tasks.step2"]
    for bar in bars:  # the links that never ran have no time to draw
        assert "wf-critical" in bar["class"]
        assert [r["class"] for r in bar.find_all("rect")] == [
            ["wf-queued"], ["wf-waiting"], ["wf-running"],
        ]  # fmt: skip


def test_flow_of_a_chord_shows_the_chord_node_its_members_and_callback(site: Site) -> None:
    client = site(chord_events(time.time() - 60))
    soup = page(client, f"/flows/{FANOUT}")
    items = tree(soup)
    assert links(items[0]) == [f"/tasks/{FANOUT}"]
    chord = items[1]
    assert edge(chord) == "spawned"
    assert text(one(chord, "strong")) == "chord"
    assert "proj.tasks.fetch_page x 3 — 3 members, 3 success" in text(chord)
    members = [i for i in items if edge(i) == "group"]
    assert sorted(link for i in members for link in links(i)) == sorted(
        f"/tasks/{m}" for m in HEADER
    )
    callbacks = [i for i in items if edge(i) == "chord"]
    assert len(callbacks) == 3  # reached from each member, shown in full once
    assert [links(i) for i in callbacks] == [[f"/tasks/{COLLECT}"]] * 3
    assert sum("(shown above)" in text(i) for i in callbacks) == 2
    # the slowest member held the callback back: it is on the critical path
    critical = soup.select("ol.critical li")
    assert [links(li) for li in critical] == [
        [f"/tasks/{FANOUT}"],
        [f"/tasks/{HEADER[2]}"],
        [f"/tasks/{COLLECT}"],
    ]
    assert len(soup.select("div.waterfall g.wf-row")) == 5  # tasks only: not the chord node
    # the group id finds the same flow
    assert len(tree(page(client, f"/flows/{CHORD_GROUP}"))) == len(items)


def test_flow_of_a_big_group_shows_one_collapsed_node_with_counts(site: Site) -> None:
    client = site(big_group(time.time() - 600))
    [node] = tree(page(client, "/flows/c0000000-0000-4000-8000-000000000123"))
    assert text(one(node, "strong")) == "group"
    assert label(one(node, ".badge.state")) == "failure"
    assert "300 members, 240 success, 30 failure, 30 started" in text(node)


TRACE = "d0000000000040008000000000000000"
CHECKOUT = [f"d0000000-0000-4000-8000-00000000000{i}" for i in range(1, 5)]


def test_trace_groups_by_root_failures_first_with_wall_time(site: Site) -> None:
    t = time.time() - 60
    child = {"sender": W1, "parent_id": CHECKOUT[0], "root_id": CHECKOUT[0], "trace_id": TRACE}
    client = site(
        [
            # an earlier root, all fine: listed after the one with a failure
            *lifecycle(CHECKOUT[3], "proj.tasks.audit", t - 10, trace_id=TRACE, runtime=2.0),
            *lifecycle(CHECKOUT[0], "proj.tasks.checkout", t, trace_id=TRACE),
            *lifecycle(CHECKOUT[1], "proj.tasks.charge", t + 1, "FAILURE", **child),
            *lifecycle(CHECKOUT[2], "proj.tasks.reserve", t + 2, **child),
            *lifecycle(ADD_OLD, "proj.tasks.add", t, trace_id="another-trace"),
        ]
    )
    soup = page(client, f"/traces/{TRACE}")
    assert text(one(soup, "h1 code")) == TRACE
    assert text(one(soup, "p.trace-summary")).startswith("4 tasks in 2 flows, 1 failed.")
    first, second = soup.select("section.trace-group")
    assert "has-failures" in first["class"]
    assert "has-failures" not in second["class"]
    assert links(first.h2) == [f"/flows/{CHECKOUT[0]}"]
    assert "3 tasks · 3.20 s wall time · 1 failed" in text(first.h2)
    assert [str(a["href"]) for tr in first.select("tbody tr") for a in tr.select("a.mono")] == [
        f"/tasks/{task_id}" for task_id in (CHECKOUT[1], CHECKOUT[0], CHECKOUT[2])
    ]  # the failure first
    failed = [tr for tr in first.select("tbody tr") if one(tr, ".badge")["title"] == "FAILURE"]
    assert [text(one(tr, "td.err .exc")) for tr in failed] == ["ValueError"]
    assert links(second.h2) == [f"/flows/{CHECKOUT[3]}"]
    assert "· 1 task · 2.20 s wall time" in text(second.h2)
    assert ADD_OLD not in str(soup)
    # One graph of both flows under the trace, one waterfall over the whole trace.
    graph = json.loads(text(one(soup, "script#flow-data")))
    assert graph["root_id"] == f"trace:{TRACE}"
    assert {(e["source"], e["target"]) for e in graph["edges"] if e["kind"] == "trace"} == {
        (f"trace:{TRACE}", CHECKOUT[0]), (f"trace:{TRACE}", CHECKOUT[3]),
    }  # fmt: skip
    assert len(soup.select(".waterfall g.wf-row")) == 4


def test_trace_still_running_says_so(site: Site) -> None:
    client = site(lifecycle(CHECKOUT[0], "proj.tasks.checkout", time.time() - 5, "STARTED",
                            trace_id=TRACE))  # fmt: skip
    [group] = page(client, f"/traces/{TRACE}").select("section.trace-group")
    assert "still running" in text(group.h2)


# -- registry and workers -------------------------------------------------------------


def test_registry_page_lists_definitions_with_their_numbers(site: Site) -> None:
    t = time.time() - 3600
    events = [
        online(
            W1,
            t,
            2.0,
            [
                registry_entry("proj.tasks.add", signature="(x, y)"),
                registry_entry(
                    "proj.tasks.charge", autoretry_for=["Timeout"], max_retries=5, rate_limit="10/m"
                ),
            ],
        )
    ]
    for index, runtime in enumerate((4.0, 1.0, 3.0, 2.0)):
        events += lifecycle(f"add-{index}", "proj.tasks.add", t + 10 + index, runtime=runtime)
    events += lifecycle("charge-0", "proj.tasks.charge", t + 20, "FAILURE", runtime=0.5)
    events += lifecycle("charge-1", "proj.tasks.charge", t + 21, "RETRY")
    events += lifecycle("charge-2", "proj.tasks.charge", t + 22, "REVOKED")
    events += lifecycle("charge-3", "proj.tasks.charge", t + 23, runtime=0.25)
    events += lifecycle("legacy-0", "proj.tasks.legacy", t + 30, runtime=7.0)
    soup = page(site(events), "/registry")
    assert text(soup.h1) == "Task registry"
    rows = {
        text(one(tr, "td a")): tr.find_all("td", recursive=False)
        for tr in soup.select("table.registry tbody tr")
    }
    assert list(rows) == ["proj.tasks.add", "proj.tasks.charge", "proj.tasks.legacy"]
    add, charge, legacy = rows.values()
    assert links(add[0]) == ["/names/proj.tasks.add"]
    assert text(one(add[0], "div.muted")) == "proj.tasks"
    # (the store keeps default_retry_delay as a float: "180.0 s" is shown for Celery's 180)
    assert [text(td) for td in add[1:3]] == ["(x, y)", "celery"]
    assert text(add[3]) in ("max 3, every 180 s", "max 3, every 180.0 s")
    p50, p95 = (buckets.percentile(buckets.histogram([1.0, 2.0, 3.0, 4.0]), q) for q in (0.5, 0.95))
    assert [text(td) for td in add[4:]] == [
        "—", "4", "0.0 %", "0.0 %", render.duration(p50), render.duration(p95),
    ]  # fmt: skip
    assert text(charge[3].find(string=True, recursive=False)).startswith("max 5, every 180")
    assert text(one(charge[3], "div.muted")) == "auto on Timeout"
    assert [text(td) for td in charge[4:8]] == ["10/m", "4", "25.0 %", "25.0 %"]
    assert "(seen only)" in text(legacy[0])
    assert "(seen only)" not in text(add[0])
    seven = buckets.percentile(buckets.histogram([7.0]), 0.5)
    assert (text(legacy[5]), text(legacy[8])) == ("1", render.duration(seven))


def test_workers_page_shows_status_words_and_running_tasks(site: Site) -> None:
    soup = page(site(fleet(time.time())), "/workers")
    rows = {text(one(tr, "td:first-child > a")): tr for tr in soup.select("table.workers tbody tr")}
    assert set(rows) == {ALIVE, LOST, GONE}
    for worker, state in ((ALIVE, "online"), (LOST, "lost"), (GONE, "offline")):
        badge = one(rows[worker], ".badge")
        assert f"worker-{state}" in badge["class"]
        assert label(badge) == state
        assert links(rows[worker])[:2] == [
            "/workers/" + quote(worker, safe=""),  # its page
            "/executions?" + urlencode({"worker": worker}),
        ]
    running = rows[ALIVE].find_all("td")[-1]
    assert links(running) == [f"/tasks/{RUNNING_ON_ALIVE}"]
    assert "proj.tasks.crunch" in text(running)
    assert "prefork \N{MULTIPLICATION SIGN} 4" in text(rows[ALIVE])
    assert "celery, emails" in text(rows[ALIVE])
    assert text(rows[GONE].find_all("td")[-1]) == "idle"


# -- not found, htmx partials ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("/tasks/no-such-task", "No task no-such-task"),
        ("/flows/no-such-task", "No task or group no-such-task"),
        ("/traces/no-such-trace", "No trace no-such-trace"),
    ],
)
def test_unknown_ids_get_a_friendly_html_404(listing: TestClient, url: str, what: str) -> None:
    response = listing.get(url)
    soup = html(response, 404)
    assert text(soup.h1) == what
    [back] = [a for a in soup.select("main a") if text(a) == "Back to recent executions"]
    assert back["href"] == "/executions"
    one(soup, "header.top nav")  # the whole page, with its navigation


@pytest.mark.parametrize(
    ("url", "live", "existing"),
    [
        ("/tasks/no-such-task", "/live?task=no-such-task", f"/tasks/{ADD_CHILD}"),
        ("/flows/no-such-task", "/live", f"/flows/{ADD_CHILD}"),
        ("/traces/no/such%3Ftrace", "/live", "/traces/trace-shop"),
    ],
)
def test_a_404_page_watches_and_opens_the_record_once_it_arrives(
    listing: TestClient, url: str, live: str, existing: str
) -> None:
    waiting = one(page(listing, url, 404), "#waiting")
    again = str(waiting["hx-get"])
    assert unquote(again) == unquote(url)  # the same route again, quoted
    assert waiting["sse-connect"] == live
    assert waiting["hx-trigger"] == "sse:changed"
    assert waiting["hx-swap"] == "none"
    still_missing = listing.get(again, headers=htmx("waiting"))
    assert (still_missing.status_code, still_missing.text) == (204, "")
    arrived = listing.get(existing, headers=htmx("waiting"))
    assert arrived.status_code == 200
    assert arrived.headers["HX-Refresh"] == "true"


def test_htmx_requests_get_only_the_rows_and_responses_vary_on_it(listing: TestClient) -> None:
    full = listing.get("/executions")
    assert "hx-request" in vary(full)
    partial = listing.get("/executions", headers=htmx("rows"))
    assert partial.status_code == 200
    assert "hx-request" in vary(partial)
    soup = BeautifulSoup(partial.text, "html.parser")
    assert soup.find("html") is None
    assert soup.find(["head", "body", "table", "tbody", "form", "script"]) is None
    assert {tag.name for tag in soup.find_all(True, recursive=False)} == {"tr"}
    assert row_ids(soup) == NEWEST_FIRST
    # the task page's refresh renders the same block without the page around it
    task = listing.get(f"/tasks/{ADD_RUNNING}", headers=htmx("task-live"))
    assert "hx-request" in vary(task)
    assert "hx-request" in vary(listing.get(f"/tasks/{ADD_RUNNING}"))
    block = BeautifulSoup(task.text, "html.parser")
    assert block.find("html") is None
    assert block.select("#task-live") == []
    assert text(one(block, "header.task-head .task-name")) == "proj.tasks.add"


@pytest.mark.parametrize("prefix", [None, "/ops/flow"])
def test_empty_store_page_refreshes_itself_whole(site: Site, prefix: str | None) -> None:
    client = site([], prefix=prefix)
    base = prefix or ""
    empty = one(page(client, f"{base}/"), "section.empty")
    assert empty["sse-connect"] == f"{base}/live"
    assert empty["hx-get"] == f"{base}/"
    assert empty["hx-target"] == "#main"
    assert empty["hx-select"] == "#main"
    # it swaps #main, so it must get the whole page back, not the rows
    refresh = client.get(str(empty["hx-get"]), headers=htmx("main"))
    one(html(refresh), "main#main section.empty")


def test_responses_vary_on_every_header_that_changes_them(listing: TestClient) -> None:
    """The same URL and HX-Request give the rows or the whole page depending on HX-Target."""
    rows = listing.get("/executions", headers=htmx("rows"))
    whole = listing.get("/executions", headers=htmx("main"))
    assert BeautifulSoup(rows.text, "html.parser").find("html") is None
    assert BeautifulSoup(whole.text, "html.parser").find("html") is not None
    for response in (rows, whole, listing.get(f"/tasks/{ADD_RUNNING}", headers=htmx("x"))):
        assert {"hx-request", "hx-target"} <= set(vary(response)), response.headers["vary"]


# -- mounted under a prefix -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/stemtrace", "/ops/flow"])
def test_mounted_every_link_has_the_prefix_and_resolves(site: Site, prefix: str) -> None:
    now = time.time()
    client = site(everything(now), prefix=prefix)
    queue = deque(
        (f"{prefix}{path}", 200)
        for path in (
            "/",
            "/executions",
            "/executions?limit=3",
            "/registry",
            "/workers",
            f"/tasks/{ADD_RUNNING}",
        )
    )
    queue += [(f"{prefix}/tasks/nope", 404), (f"{prefix}/executions?since=garbage", 422)]
    seen = {url for url, _ in queue}
    kinds: set[str] = set()
    while queue:
        url, status = queue.popleft()
        assert len(seen) < 1000, "the crawl does not end"
        response = client.get(url)
        assert response.status_code == status, (url, response.status_code)
        path = urlsplit(url).path
        kinds.add(path.removeprefix(prefix).split("/")[1])
        if not response.headers["content-type"].startswith("text/html"):
            assert path.startswith((f"{prefix}/static/", f"{prefix}/api/flows/")), url
            continue
        soup = html(response, status)
        assert_no_active_content(soup, prefix)
        # the same list sorted or windowed otherwise (tests/test_executions_sort.py follows them)
        facets = {str(a["href"]) for a in soup.select("a[rel~=nofollow]")}
        for name, attribute, found in urls_in(soup):
            if found in facets:
                assert found.startswith(f"{prefix}/executions?"), found
                continue
            if name == "link" and found.startswith("data:"):
                assert found == "data:,", found  # the empty favicon: no request at all
                continue
            assert found.startswith(f"{prefix}/"), (url, name, attribute, found)
            if attribute == "sse-connect":
                live = (f"{prefix}/live", f"{prefix}/live/problems")
                assert urlsplit(found).path in live  # never ends: not opened
            elif attribute != "hx-get" and found not in seen:
                seen.add(found)
                queue.append((found, 200))
        for live in soup.find_all(attrs={"hx-get": True}):  # as htmx refreshes the page
            target = str(live.get("hx-target", f"#{live['id']}")).removeprefix("#")
            refresh = client.get(str(live["hx-get"]), headers=htmx(target))
            expected = 204 if target == "waiting" else status  # a 404 asking again
            assert refresh.status_code == expected, (url, live["hx-get"])
    assert kinds >= {"", "tasks", "flows", "traces", "registry", "workers", "static", "api"}
    assert any("cursor=" in url for url in seen)
    assert f"{prefix}/flows/{FANOUT}" in seen
    assert f"{prefix}/api/flows/{FANOUT}/graph.dot" in seen


@pytest.mark.parametrize("prefix", [None, "/stemtrace", "/ops/flow"])
@pytest.mark.parametrize(
    ("path", "media_types"),
    [
        ("stemtrace.css", {"text/css"}),
        ("stemtrace.js", {"text/javascript", "application/javascript"}),
        ("vendor/htmx.min.js", {"text/javascript", "application/javascript"}),
        ("vendor/htmx-ext-sse.min.js", {"text/javascript", "application/javascript"}),
    ],
)
def test_static_files_are_served_with_their_content_type(
    site: Site, prefix: str | None, path: str, media_types: set[str]
) -> None:
    client = site([], prefix=prefix)
    response = client.get(f"{prefix or ''}/static/{path}")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in media_types
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC / path).read_bytes()


def test_static_files_cannot_leave_the_static_folder(site: Site) -> None:
    client = site([], prefix="/stemtrace")
    for path in ("..%2Fsettings.py", "..%2F..%2Fpyproject.toml", "vendor", "missing.css"):
        assert client.get(f"/stemtrace/static/{path}").status_code == 404, path


# -- auth -----------------------------------------------------------------------------

KEY = "sesame-7f3a"


def require_key(request: Request) -> None:
    if request.headers.get("x-ops-key") != KEY:
        raise HTTPException(401, "who are you?")


GUARDED = [
    "/",
    "/executions?state=FAILURE",
    f"/tasks/{CHARGE}",
    f"/flows/{CHARGE}",
    "/traces/trace-pay",
    "/registry",
    "/workers",
    "/static/stemtrace.css",
    "/static/vendor/htmx.min.js",
    "/api/tasks",
    f"/api/tasks/{CHARGE}",
    f"/api/flows/{CHARGE}",
    f"/api/flows/{CHARGE}/waterfall",
    f"/api/flows/{CHARGE}/graph.dot",
    f"/api/flows/{CHARGE}/graph.svg",
    "/api/traces/trace-pay",
    "/api/registry",
    "/api/workers",
    "/api/health",
    "/metrics",
]


def test_extension_dependencies_guard_every_route(site: Site) -> None:
    client = site(catalog(time.time()), prefix="/ops", dependencies=[Depends(require_key)])
    for path in [*GUARDED, "/live", f"/live?task={CHARGE}", "/tasks/nope", "/static/nope.css"]:
        response = client.get(f"/ops{path}")
        assert response.status_code == 401, path
        assert "cus_ALICE" not in response.text
    for path in GUARDED:
        response = client.get(f"/ops{path}", headers={"X-Ops-Key": KEY})
        assert response.status_code == 200, path
    assert client.get("/ops/tasks/nope", headers={"X-Ops-Key": KEY}).status_code == 404
    wrong = client.get("/ops/", headers={"X-Ops-Key": KEY + "x"})
    assert wrong.status_code == 401


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


BEARER = {"Authorization": "Bearer tok-9c1e"}


@pytest.mark.parametrize(
    ("settings", "challenge", "good", "bad"),
    [
        (
            {"auth_token": "tok-9c1e"},
            "Bearer",
            [BEARER],
            [{"Authorization": "Bearer tok-9c1"}, {"Authorization": "Bearer"}, basic("a", "b")],
        ),
        (
            {"auth_user": "ops", "auth_password": "pa:ss"},
            'Basic realm="stemtrace"',
            [basic("ops", "pa:ss")],
            [basic("ops", "pa:s"), basic("op", "pa:ss"), {"Authorization": "Basic !!!"}, BEARER],
        ),
        (
            {"auth_token": "tok-9c1e", "auth_user": "ops", "auth_password": "pa:ss"},
            'Basic realm="stemtrace"',
            [BEARER, basic("ops", "pa:ss")],
            [basic("ops", "tok-9c1e"), {"Authorization": "Bearer pa:ss"}],
        ),
    ],
)
def test_standalone_builtin_auth(
    site: Site,
    settings: dict[str, str],
    challenge: str,
    good: list[dict[str, str]],
    bad: list[dict[str, str]],
) -> None:
    client = site(catalog(time.time()), **settings)
    for path in ["/", f"/tasks/{CHARGE}", "/static/stemtrace.css", "/api/tasks", "/api/health"]:
        anonymous = client.get(path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"] == challenge
        assert "cus_ALICE" not in anonymous.text
        for headers in good:
            assert client.get(path, headers=headers).status_code == 200, (path, headers)
        for headers in bad:
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.headers["www-authenticate"] == challenge
    assert client.get("/live").status_code == 401


# -- security headers and scripts -----------------------------------------------------


@pytest.mark.parametrize("prefix", [None, "/stemtrace"])
@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        (f"/tasks/{CHARGE}", 200),
        ("/executions?since=garbage", 422),
        ("/tasks/no-such-task", 404),
        ("/static/stemtrace.css", 200),
        ("/api/tasks", 200),
        ("/api/tasks/no-such-task", 404),
        ("/static/missing.css", 404),
    ],
)
def test_security_headers_on_every_kind_of_response(
    site: Site, prefix: str | None, path: str, status: int
) -> None:
    client = site(catalog(time.time()), prefix=prefix)
    response = client.get(f"{prefix or ''}{path}")
    assert response.status_code == status
    csp = csp_of(response)
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert "'unsafe-eval'" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_no_page_has_inline_script_or_event_handlers(site: Site) -> None:
    client = site(everything(time.time()))
    urls = [
        "/", "/executions", "/executions?limit=3", "/executions?since=garbage", f"/tasks/{FETCH}",
        f"/tasks/{ADD_RUNNING}", f"/tasks/{CHARGE}", f"/flows/{STEP[1]}", f"/flows/{FANOUT}",
        "/traces/trace-feed", "/registry", "/workers", "/tasks/nope",
    ]  # fmt: skip
    for url in urls:
        response = client.get(url)
        soup = html(response, {"/executions?since=garbage": 422, "/tasks/nope": 404}.get(url, 200))
        scripts = [str(s["src"]) for s in soup.find_all("script") if s.get("src")]
        expected = [
            "/static/vendor/htmx.min.js",
            "/static/vendor/htmx-ext-sse.min.js",
            "/static/stemtrace.js",
        ]
        if url.startswith(("/flows/", "/traces/")):
            expected.append("/static/graph/stemtrace-graph.js")
        assert scripts == expected, url
        assert_no_active_content(soup)
        config = one(soup, "meta[name=htmx-config]")["content"]
        assert '"allowEval": false' in config
        assert '"allowScriptTags": false' in config


# -- hostile task data ----------------------------------------------------------------

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "javascript:alert(1)",
]


def evil_id(index: int, kind: str) -> str:
    return f"e{kind}000000-0000-4000-8000-00000000000{index}"


def hostile(now: float) -> list[Event]:
    """Each payload in every field a task can fill: name, args, kwargs (keys and values),
    result, exception message and traceback, worker name, trace id; one task per
    payload retried once then succeeded, one failed, one spawned child, one running."""
    found: list[Event] = []
    for index, p in enumerate(PAYLOADS):
        t = now - 300 + index * 10
        call = {"args": [p, {p: [p]}], "kwargs": {p: p, "note": p}}
        done = Task(evil_id(index, "a"), p, trace_id=p)
        again = Task(evil_id(index, "a"), p, parent_id=done.id, trace_id=p)
        failure = exception("ValueError", p)
        failure["traceback"] += f'  File "{p}", line 1, in {p}\n'
        found += [
            done.sent(t, **call),
            done.received(t + 0.1, p),
            done.started(t + 0.2, p),
            done.ended("retry", t + 1, p, retries=0, attempt=1, retry_at=t + 2, runtime=0.8,
                       **failure),
            again.sent(t + 1.1, p, retries=1, **call),
            again.received(t + 2, p, retries=1),
            again.started(t + 2.1, p, retries=1),
            again.ended("succeeded", t + 3, p, retries=1, runtime=0.9, result={p: [p, {p: p}]}),
        ]  # fmt: skip
        found += lifecycle(evil_id(index, "b"), p, t + 4, "FAILURE", worker=p, trace_id=p,
                           exc=("ValueError", p), **call)  # fmt: skip
        found += lifecycle(evil_id(index, "c"), p, t + 5, sender=p, worker=p, trace_id=p,
                           parent_id=done.id, root_id=done.id)  # fmt: skip
        found += lifecycle(evil_id(index, "d"), p, now - 5, "STARTED", worker=p, trace_id=p)
        found.append(online(p, now - 60, 2.0, [registry_entry(p, signature=p, rate_limit=p)]))
        found.append(worker_event("worker_heartbeat", p, now - 1, freq=2.0, active=1))
    return found


def assert_shown_as_text(soup: BeautifulSoup, payload: str, where: str) -> None:
    assert_no_active_content(soup)
    for name in ("img", "iframe", "object", "embed"):
        assert soup.find_all(name) == [], (where, name)
    for svg in soup.find_all("svg"):  # only the server-drawn charts
        drawn = svg.get("class") == ["timeline"] or svg.parent.get("class") == ["waterfall"]
        assert drawn or "chart" in svg.get("class", []), where
    assert payload in soup.get_text(), f"{where}: the payload is not shown"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_task_data_is_shown_as_text_on_every_page(site: Site, payload: str) -> None:
    index = PAYLOADS.index(payload)
    client = site(hostile(time.time()))
    ok = {
        "overview": "/",
        "executions": "/executions",
        "search": "/executions?" + urlencode({"q": payload}),
        "name filter": "/executions?" + urlencode({"name": payload}),
        "worker filter": "/executions?" + urlencode({"worker": payload}),
        "trace filter": "/executions?" + urlencode({"trace_id": payload}),
        "registry": "/registry",
        "workers": "/workers",
        "retried task": f"/tasks/{evil_id(index, 'a')}",
        "failed task": f"/tasks/{evil_id(index, 'b')}",
        "child task": f"/tasks/{evil_id(index, 'c')}",
        "running task": f"/tasks/{evil_id(index, 'd')}",
        "flow": f"/flows/{evil_id(index, 'a')}",
        "trace": "/traces/" + quote(payload, safe=""),
    }
    for where, url in ok.items():
        response = client.get(url)
        assert response.status_code == 200, (where, url, response.status_code, response.text)
        assert_shown_as_text(html(response), payload, where)
    for where, query in (("bad since", {"since": payload}), ("bad state", {"state": payload})):
        soup = page(client, "/executions", 422, **query)
        assert_shown_as_text(soup, payload, where)
        assert payload in text(one(soup, "p.error"))
    # a 404 echoes the id it did not find ('/' cannot be part of one path segment)
    missing = payload.replace("/", "")
    soup = page(client, "/tasks/" + quote(missing, safe=""), 404)
    assert_shown_as_text(soup, missing, "404")
    assert text(one(soup, "h1 code")) == missing

    # where each value lands on the task pages, it is the very text of that element
    done = page(client, f"/tasks/{evil_id(index, 'a')}")
    assert text(one(done, ".task-name")) == " ".join(payload.split())
    assert text(facts(done)["Worker"]) == " ".join(payload.split())
    assert one(facts(done)["Trace"], "a").get_text() == payload
    assert payload in [k.get_text() for k in value_box(done, "kwargs").select(".v-key")]
    assert payload in [k.get_text() for k in value_box(done, "result").select(".v-key")]
    assert payload in one(done, "table.attempts details pre.tb").get_text()
    failed = page(client, f"/tasks/{evil_id(index, 'b')}")
    assert payload in one(failed, "section[aria-labelledby=exc-h] p").get_text()
    assert payload in one(failed, "section[aria-labelledby=exc-h] pre.tb").get_text()

    # the flow's SVG export is opened in the browser too: labels are text there as well
    exports = [h for h in links(page(client, f"/flows/{evil_id(index, 'a')}")) if "/graph." in h]
    assert [h.rsplit(".", 1)[1] for h in exports] == (
        ["dot", "svg"] if shutil.which("dot") else ["dot"]
    )
    for url in exports[1:]:
        svg = client.get(url)
        assert svg.status_code == 200
        assert svg.headers["content-type"] == "image/svg+xml"
        assert "sandbox" in csp_of(svg)
        with warnings.catch_warnings():  # an SVG file is XML: html.parser is stricter here
            warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
            drawing = BeautifulSoup(svg.text, "html.parser")
        assert drawing.find_all(["script", "foreignobject", "img", "iframe"]) == []
        assert_no_active_content(drawing)
        assert payload in drawing.get_text()


def test_ids_with_url_characters_link_to_their_own_pages(site: Site) -> None:
    """Celery accepts any task id, and capture accepts trace ids such as ``checkout/42``."""
    now = time.time()
    odd = ["report/2024-06", "a?b#c", "50%off", "tâche ✓"]
    events: list[Event] = []
    for index, task_id in enumerate(odd):
        events += lifecycle(task_id, "proj.tasks.odd", now - 60 + index, trace_id=f"t/{index}")
    client = site(events)
    listing = client.get("/executions")
    assert listing.status_code == 200, listing.text
    soup = html(listing)
    hrefs = [links(one(soup, f"tr[id='task-{task_id}']"))[1] for task_id in odd]
    for task_id, href in zip(odd, hrefs, strict=True):
        task = client.get(href)
        assert task.status_code == 200, (task_id, href, task.status_code)
        assert text(one(html(task), "dl.facts code")) == task_id, href
        trace = links(facts(html(task))["Trace"])[0]
        assert client.get(trace).status_code == 200, (task_id, trace)


# -- live updates ---------------------------------------------------------------------


async def listen(broadcaster: Broadcaster, task_ids: frozenset[str] | None) -> Any:
    stream = broadcaster.events(
        task_ids, is_disconnected=lambda: False, min_interval=0.0, keepalive=60.0
    )
    assert await anext(stream) == {"event": "ready", "data": ""}
    return stream


def test_broadcaster_wakes_only_subscribers_of_the_changed_tasks() -> None:
    async def scenario() -> None:
        broadcaster = Broadcaster()
        one_task = await listen(broadcaster, frozenset({"a"}))
        pending = asyncio.ensure_future(anext(one_task))
        await asyncio.sleep(0)
        assert broadcaster.count == 1

        broadcaster.notify({"b"})
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done, "woken by a change to another task"

        await asyncio.to_thread(broadcaster.notify, {"a", "b"})  # from the writer thread
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert done, "not woken by a change to its task"
        assert pending.result() == {"event": "changed", "data": ""}

        pending = asyncio.ensure_future(anext(one_task))
        broadcaster.notify(None)  # a separate consumer wrote: anything may have changed
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert done, "not woken by an unspecified change"
        assert pending.result() == {"event": "changed", "data": ""}

        pending = asyncio.ensure_future(anext(one_task))
        broadcaster.notify(set(), workers={"celery@w"})  # the workers page cares, a task not
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done, "woken by a worker change"
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await one_task.aclose()
        assert broadcaster.count == 0

    asyncio.run(scenario())


def test_broadcaster_page_watching_everything_is_woken_by_any_change() -> None:
    async def scenario() -> None:
        broadcaster = Broadcaster()
        stream = await listen(broadcaster, None)
        for change in ({"b"}, None):
            pending = asyncio.ensure_future(anext(stream))
            broadcaster.notify(change)
            done, _ = await asyncio.wait({pending}, timeout=1.0)
            assert done, change
            assert pending.result() == {"event": "changed", "data": ""}
        pending = asyncio.ensure_future(anext(stream))
        broadcaster.notify(set(), workers={"celery@w"})
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert done
        await stream.aclose()
        assert broadcaster.count == 0

    asyncio.run(scenario())


def test_broadcaster_coalesces_a_burst_into_one_message() -> None:
    async def scenario() -> None:
        broadcaster = Broadcaster()
        stream = await listen(broadcaster, frozenset({"a"}))
        for _ in range(50):
            broadcaster.notify({"a"})
        pending = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert done
        assert pending.result()["event"] == "changed"
        pending = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done, "one burst made more than one message"
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()

    asyncio.run(scenario())


# -- read-only ------------------------------------------------------------------------

ROUTES = [
    "/",
    "/executions",
    f"/tasks/{CHARGE}",
    f"/flows/{CHARGE}",
    "/traces/trace-pay",
    "/registry",
    "/workers",
    "/static/stemtrace.css",
    "/live",
    "/api/tasks",
    f"/api/tasks/{CHARGE}",
    f"/api/flows/{CHARGE}",
    f"/api/flows/{CHARGE}/waterfall",
    f"/api/flows/{CHARGE}/graph.dot",
    f"/api/flows/{CHARGE}/graph.svg",
    f"/api/groups/{CHORD_GROUP}/members",
    "/api/traces/trace-pay",
    "/api/registry",
    "/api/workers",
    "/api/health",
]


@pytest.mark.parametrize("prefix", [None, "/stemtrace"])
def test_no_route_accepts_writes(site: Site, prefix: str | None) -> None:
    client = site(catalog(time.time()), prefix=prefix)
    base = prefix or ""
    for path in ROUTES:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = client.request(method, f"{base}{path}", json={"state": "SUCCESS"})
            assert response.status_code in (404, 405), (method, path, response.status_code)
    # nothing changed, and no form or htmx attribute writes either
    assert row_ids(page(client, f"{base}/executions")) == NEWEST_FIRST
    for url in (f"{base}/", f"{base}/tasks/{CHARGE}"):
        soup = page(client, url)
        forms = soup.find_all("form")
        assert len(forms) == (2 if url == f"{base}/" else 1)  # filters, and the search box
        assert [str(f.get("method", "get")).lower() for f in forms] == ["get"] * len(forms)
        assert writes(soup) == []
