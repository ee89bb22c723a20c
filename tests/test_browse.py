"""The flows, traces and task-name pages and their JSON, against real canvases in a store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from bs4 import BeautifulSoup
from starlette.testclient import TestClient

from stemtrace.core.events import Event
from stemtrace.store import FlowFilters, Store
from tests.factories import (
    BIG_GROUP,
    FANOUT,
    SCRIPT,
    STEP,
    W1,
    big_group,
    chain_events,
    chord_events,
    detail_of,
    lifecycle,
    link,
    ok,
    registry_entry,
    worker_event,
)
from tests.site import Site, assert_no_active_content, html, links, one, page, text, value_box

NOW = time.time()
T = NOW - 7200  # two hours ago: inside the task-name page's default range (24 h)
HOSTILE = "<script>alert('x')</script>\"q\""


def canvases() -> list[Event]:
    return [
        *chain_events(T, "FAILURE"),  # step1 ok, step2 failed: step3 and step4 never ran
        *chord_events(T + 100),
        *big_group(T + 200),
        *lifecycle("alone", "proj.tasks.alone", T + 300),  # one task: not a workflow
        *lifecycle("req-1", "proj.tasks.mail", T + 400, trace_id="request-42"),
    ]


def payments() -> list[Event]:
    """One error met with five different values, and another type of the same task."""
    found: list[Event] = []
    for n in range(5):
        found += lifecycle(
            f"pay-{n}", "proj.pay", T + n * 60, "FAILURE",
            exc=("ConnectionError", f"cannot reach 10.0.0.{n}:5432 after {n + 1} tries"),
        )  # fmt: skip
    found += lifecycle("pay-x", "proj.pay", T + 10, "FAILURE", exc=("KeyError", "'user_id'"))
    found += lifecycle("pay-ok", "proj.pay", T + 20)
    found += lifecycle("mail-0", "proj.mail", T + 30, "FAILURE", exc=("KeyError", "'user_id'"))
    return found


def read(db_path: Path, reader: Callable[[Store], Any]) -> Any:
    store = Store(db_path)
    try:
        return reader(store)
    finally:
        store.close()


def every_flow(store: Store, filters: FlowFilters) -> list[dict[str, Any]]:
    found, cursor = store.list_flows(filters, None, 500)
    assert cursor is None
    return found


def flow_rows(soup: BeautifulSoup) -> dict[str, dict[str, str]]:
    found = {}
    for tr in soup.select("table.flows tbody tr[id^=flow-]"):
        cells = tr.find_all("td", recursive=False)
        found[str(tr["id"]).removeprefix("flow-")] = {
            "outcome": text(cells[0]),
            "name": text(cells[1]),
            "open": str(one(tr, "a.open-flow")["href"]),
            "shape": text(cells[3]),
            "tasks": text(cells[4]),
            "failed": text(cells[5]),
        }
    return found


def shape_text(shape: dict[str, int]) -> str:
    nouns = [("chains", "chain"), ("groups", "group"), ("chords", "chord"),
             ("spawned", "spawned task")]  # fmt: skip
    parts = [f"{shape[k]} {noun}{'' if shape[k] == 1 else 's'}" for k, noun in nouns if shape[k]]
    return " · ".join(parts) or "—"


def walk(client: TestClient, url: str) -> list[BeautifulSoup]:
    """Every page of a list, following its "Older" link."""
    pages = [page(client, url)]
    while more := pages[-1].select_one("nav.pager a[rel=next]"):
        pages.append(page(client, str(more["href"])))
    return pages


# -- flows ---------------------------------------------------------------------------


def test_flows_page_and_json_list_the_stores_workflows(site: Site, db_path: Path) -> None:
    client = site(canvases())
    stored = read(db_path, lambda s: every_flow(s, FlowFilters()))
    assert [f["id"] for f in stored] == [BIG_GROUP, FANOUT, STEP[1]]

    listed = ok(client, "/api/flows")
    assert listed["next_cursor"] is None
    assert listed["flows"] == stored

    soup = page(client, "/flows")
    assert text(soup.h1) == "Flows"
    rows = flow_rows(soup)
    assert list(rows) == [f["id"] for f in stored]  # newest first
    for flow in stored:
        row = rows[flow["id"]]
        assert row["outcome"] == flow["outcome"]
        assert row["name"] == flow["name"]
        assert row["tasks"] == str(flow["tasks"])
        assert row["failed"] == (str(flow["failures"]) if flow["failures"] else "")
        assert row["open"] == f"/flows/{flow['id']}"
        opened = page(client, row["open"])  # a click opens the flow's graph
        assert one(opened, "#flow-graph")
    assert rows[STEP[1]]["outcome"] == "broken"  # step3 and step4 never ran
    for flow in stored:
        assert rows[flow["id"]]["shape"] == shape_text(flow["shape"])
    assert rows[STEP[1]]["shape"] == "1 chain"  # its second link ran: still one chain
    assert rows[FANOUT]["shape"] == "1 chord"  # its header is the chord's, not a group
    assert rows[FANOUT]["outcome"] == "succeeded" and rows[BIG_GROUP]["outcome"] == "running"
    chain = one(soup, f"tr#flow-{STEP[1]}")
    assert "/names/proj.tasks.step1" in links(chain)
    assert f"/traces/{FANOUT}" in links(one(soup, f"tr#flow-{FANOUT}"))
    assert_no_active_content(soup)


def chains(count: int) -> list[Event]:
    """``count`` two-link chains, two by two sent at the same moment (ties for the cursor)."""
    found: list[Event] = []
    for n in range(count):
        root, child, t = f"root-{n}", f"child-{n}", T + (n // 2) * 10
        found += lifecycle(root, "proj.tasks.first", t, chain=[link(child, "proj.tasks.second")])
        found += lifecycle(
            child, "proj.tasks.second", t + 2, sender=W1, parent_id=root, root_id=root
        )
    return found


def test_flows_paginate_without_duplicates_page_and_json(site: Site) -> None:
    client = site(chains(7))
    every = [f["id"] for f in ok(client, "/api/flows", limit=500)["flows"]]
    assert sorted(every) == sorted(f"root-{n}" for n in range(7))

    walked, cursor = [], None
    while True:
        found = ok(client, "/api/flows", limit=2, **({"cursor": cursor} if cursor else {}))
        walked += [f["id"] for f in found["flows"]]
        if (cursor := found["next_cursor"]) is None:
            break
    assert walked == every

    pages = walk(client, "/flows?limit=3")
    assert len(pages) == 3
    seen = [flow_id for soup in pages for flow_id in flow_rows(soup)]
    assert seen == every
    newest = pages[-1].select_one("nav.pager a:not([rel])")
    assert newest is not None and "cursor" not in str(newest["href"])


def test_flows_filter_by_outcome_name_and_time(site: Site, db_path: Path) -> None:
    client = site(canvases())

    def ids(**query: Any) -> list[str]:
        api = [f["id"] for f in ok(client, "/api/flows", **query)["flows"]]
        assert list(flow_rows(page(client, "/flows", **query))) == api
        return api

    assert ids(outcome="failed") == [STEP[1]]  # broken counts as failed
    assert ids(outcome="succeeded") == [FANOUT]
    assert ids(outcome="running") == [BIG_GROUP]
    assert ids(name="proj.tasks.fanout") == [FANOUT]
    assert ids(name="proj.tasks.resize") == [BIG_GROUP]  # a group's: any member's name
    assert ids(since=str(T + 50), until=str(T + 150)) == [FANOUT]
    assert ids(since="3h", until=str(T + 50)) == [STEP[1]]
    assert ids(name="proj.tasks.none") == []
    soup = page(client, "/flows", outcome="failed", name="proj.tasks.step1")
    assert one(soup, "select[name=outcome] option[selected]")["value"] == "failed"
    assert one(soup, "input[name=name]")["value"] == "proj.tasks.step1"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"outcome": "broken"}, "outcome must be one of running, failed, succeeded"),
        ({"cursor": "not-a-cursor"}, "invalid cursor"),
        ({"since": "yesterday"}, "since must be epoch seconds"),
        ({"until": "nan"}, "until must be a finite time"),
    ],
)
def test_bad_flow_and_trace_parameters_are_422(
    site: Site, query: dict[str, str], words: str
) -> None:
    client = site(canvases())
    response = client.get("/api/flows", params=query)
    assert response.status_code == 422 and words in detail_of(response)
    soup = html(client.get("/flows", params=query), 422)
    assert words in text(one(soup, "p.error"))
    assert flow_rows(soup) == {}
    if "outcome" not in query:
        response = client.get("/api/traces", params=query)
        assert response.status_code == 422 and words in detail_of(response)
        assert words in text(one(html(client.get("/traces", params=query), 422), "p.error"))


# -- traces --------------------------------------------------------------------------


def test_traces_page_and_json_list_the_stores_traces(site: Site, db_path: Path) -> None:
    client = site(canvases())
    stored, cursor = read(db_path, lambda s: s.list_traces(None, None, None, 500))
    assert cursor is None
    listed = ok(client, "/api/traces")
    assert listed == {"traces": stored, "next_cursor": None}
    ids = [t["trace_id"] for t in stored]
    assert ids[0] == "request-42" and FANOUT in ids and "alone" not in ids

    soup = page(client, "/traces")
    rows = soup.select("table.traces tbody tr")
    assert [str(one(tr, "a.open-trace")["href"]) for tr in rows] == [f"/traces/{i}" for i in ids]
    for tr, trace in zip(rows, stored, strict=True):
        cells = [text(td) for td in tr.find_all("td", recursive=False)]
        assert cells[2] == str(trace["tasks"])
        assert cells[3] == (str(trace["failures"]) if trace["failures"] else "")
        assert trace["first_task"]["name"] in cells[1]
        assert f"/tasks/{trace['first_task']['id']}" in links(tr)
        assert page(client, f"/traces/{trace['trace_id']}")  # each opens
    request = rows[0]
    assert "/names/proj.tasks.mail" in links(request)

    walked, cursor = [], None
    while True:
        found = ok(client, "/api/traces", limit=1, **({"cursor": cursor} if cursor else {}))
        walked += [t["trace_id"] for t in found["traces"]]
        if (cursor := found["next_cursor"]) is None:
            break
    assert walked == ids
    paged = [str(a["href"]) for soup in walk(client, "/traces?limit=1")
             for a in soup.select("a.open-trace")]  # fmt: skip
    assert paged == [f"/traces/{i}" for i in ids]
    since = ok(client, "/api/traces", since=str(T + 350))["traces"]
    assert [t["trace_id"] for t in since] == ["request-42"]


# -- error groups and the task-name page ---------------------------------------------


def test_api_errors_groups_one_error_met_with_different_values(site: Site) -> None:
    client = site(payments())
    pay = ok(client, "/api/errors", name="proj.pay")
    assert pay["name"] == "proj.pay"
    assert pay["until"] == pytest.approx(time.time(), abs=60)
    assert pay["since"] == pytest.approx(pay["until"] - 86400, abs=1)
    groups = pay["groups"]
    assert [(g["exc_type"], g["count"]) for g in groups] == [
        ("ConnectionError", 5), ("KeyError", 1),
    ]  # fmt: skip
    connection = groups[0]
    assert connection["last_task_id"] == "pay-4"
    assert "10.0.0" not in connection["message"]
    assert sum(n for _, n in connection["hours"]) == 5
    every = ok(client, "/api/errors")["groups"]
    assert sorted((g["name"], g["exc_type"], g["count"]) for g in every) == [
        ("proj.mail", "KeyError", 1),
        ("proj.pay", "ConnectionError", 5),
        ("proj.pay", "KeyError", 1),
    ]
    # counted by the hour: a range from the hour after the last failure holds none
    assert ok(client, "/api/errors", since=str(T + 3600 + 300))["groups"] == []
    assert len(ok(client, "/api/errors", limit=1)["groups"]) == 1
    for bad in ({"since": "soon"}, {"since": "1h", "until": "2h"}, {"limit": "0"}):
        assert client.get("/api/errors", params=bad).status_code == 422, bad


def test_task_name_page_shows_definition_charts_and_error_groups(site: Site) -> None:
    definition = registry_entry("proj.pay", signature="(order_id)", queue="payments",
                                max_retries=5, rate_limit="10/m")  # fmt: skip
    online = worker_event(
        "worker_online", "celery@pay", T - 10, sw_ver="5.4.0", pool="prefork", concurrency=4,
        queues=["payments"], freq=2.0, tasks=[definition],
    )  # fmt: skip
    client = site([online, *payments()])
    soup = page(client, "/names/proj.pay")
    assert text(soup.h1) == "proj.pay"
    facts = text(one(soup, "#definition dl"))
    for expected in ("(order_id)", "payments", "max 5", "10/m", "celery@pay"):
        assert expected in facts, (expected, facts)
    assert text(value_box(soup, "Failed").p) == "6"
    assert text(value_box(soup, "Finished").p) == "7"
    for chart in ("throughput", "failure-rate", "queue-wait", "run-time"):
        assert one(soup, f"#chart-{chart} svg")
    assert one(soup, ".ranges a[aria-current=page]")["href"] == "/names/proj.pay?range=24h"

    groups = soup.select("tr.error-group")
    assert [(text(one(g, ".exc")), text(one(g, ".count"))) for g in groups] == [
        ("ConnectionError", "5"), ("KeyError", "1"),
    ]  # fmt: skip
    connection = groups[0]
    assert "10.0.0" not in text(one(connection, ".message"))
    tb = one(connection, "details pre.tb")
    assert "ConnectionError: cannot reach 10.0.0.4:5432 after 5 tries" in text(tb)
    spark = one(connection, "svg.chart-spark")
    assert "5 in" in str(spark["aria-label"])
    failures = str(one(connection, "a.latest-failures")["href"])
    query = parse_qs(urlsplit(failures).query)
    assert query == {"name": ["proj.pay"], "state": ["FAILURE"], "q": ["ConnectionError"]}
    listed = page(client, failures)
    assert sorted(str(tr["id"]) for tr in listed.select("tr[id^=task-]")) == [
        f"task-pay-{n}" for n in range(5)
    ]
    assert "/tasks/pay-4" in links(connection)

    later = page(client, "/names/proj.pay", range="15m")  # the failures are two hours old
    assert later.select("tr.error-group") == []
    assert "No failures in the last 15 min" in text(one(later, "#error-groups"))
    bad = html(client.get("/names/proj.pay", params={"range": "2y"}), 422)
    assert "range must be one of" in text(one(bad, "p.error"))


def test_an_unknown_task_name_is_a_404_page(site: Site) -> None:
    client = site(payments())
    soup = html(client.get("/names/proj.nothing"), 404)
    assert text(soup.h1) == "No task name proj.nothing"


def test_task_names_link_to_their_page_everywhere(site: Site) -> None:
    client = site([*payments(), *chain_events(T, "SUCCESS")])
    name_page = "/names/proj.pay"
    registry = page(client, "/registry")
    assert name_page in links(registry)
    executions = page(client, "/executions")
    assert name_page in links(one(executions, "tr#task-pay-x"))
    task = page(client, "/tasks/pay-x")
    assert links(one(task, "h1")) == [name_page]
    flows = page(client, "/flows")
    assert "/names/proj.tasks.step1" in links(flows)
    for url in (name_page, "/names/proj.tasks.step1", "/names/proj.mail"):
        assert page(client, url)


# -- hostile text --------------------------------------------------------------------


def test_hostile_names_and_messages_stay_inert(site: Site) -> None:
    hostile_type = "<img src=x onerror=alert(1)>"
    events = lifecycle("evil-1", SCRIPT, T, "FAILURE", exc=(hostile_type, HOSTILE))
    events += lifecycle("evil-2", SCRIPT, T + 1, parent_id="evil-1", root_id="evil-1",
                        sender="w", trace_id="evil-1")  # fmt: skip
    client = site(events)
    registry = page(client, "/registry")
    [href] = [h for h in links(registry) if h.startswith("/names/")]
    soup = page(client, href)
    assert text(soup.h1) == SCRIPT
    assert_no_active_content(soup)
    assert soup.select("main img, main script") == []
    group = one(soup, "tr.error-group")
    assert text(one(group, ".exc")) == hostile_type
    assert "<script>" in text(one(group, ".message"))
    spark = one(group, "svg.chart-spark")
    assert spark.select("img, script, foreignObject") == []
    assert hostile_type in str(spark["aria-label"])
    for svg in soup.select("svg"):
        assert svg.select("script, img, foreignObject") == [], svg
    flows = page(client, "/flows")
    assert_no_active_content(flows)
    assert text(one(flows, "table.flows tbody tr td:nth-of-type(2)")) == SCRIPT
    assert flows.select("main script, main img") == []
    traces = page(client, "/traces")
    assert_no_active_content(traces)
    assert traces.select("main script, main img") == []
    groups = ok(client, "/api/errors")["groups"]
    assert [(g["name"], g["exc_type"]) for g in groups] == [(SCRIPT, hostile_type)]
    quoted = html(client.get("/names/" + HOSTILE), 404)
    assert_no_active_content(quoted)
    assert text(quoted.h1) == f"No task name {HOSTILE}"


def test_the_lists_agree_with_the_pages_they_open(site: Site) -> None:
    """A listed flow's size and failures are its flow graph's; a listed trace's, its trace's."""
    client = site(canvases())
    flows, traces = ok(client, "/api/flows")["flows"], ok(client, "/api/traces")["traces"]
    assert len(flows) >= 3 and len(traces) >= 2
    for flow in flows:
        graph = ok(client, f"/api/flows/{flow['id']}")
        tasks = [n for n in graph["nodes"] if n["kind"] == "task"]
        ran = [n for n in tasks if n["state"] not in ("NOT_RUN", "PLANNED")]
        size = sum(n.get("size", 1) for n in graph["nodes"] if n["kind"] == "group") + len(ran)
        assert flow["tasks"] == size, flow["id"]
    for trace in traces:
        opened = ok(client, f"/api/traces/{trace['trace_id']}")
        assert (trace["tasks"], trace["failures"]) == (opened["count"], opened["failures"])
