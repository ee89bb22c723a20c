"""The executions list sorted by run time or queue wait, its "so far" values and its ETA column.

Each test builds a store from events as capture makes them (tests/factories.py)
and reads the page (parsed with BeautifulSoup) or ``GET /api/tasks``; every
expected order is a Python sort of the same rows, unsorted, as the list gives them.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from stemtrace.core.events import Event
from stemtrace.store import TaskFilters
from stemtrace.store.queries import LIST_COLUMNS, _where
from stemtrace.store.ranked import page_sql
from tests.factories import W1, W2, Task, ok
from tests.site import Site, assert_no_active_content, html, htmx, one, page, row_ids, text

LIMIT = 500


def run(
    task_id: str,
    name: str,
    sent: float,
    wait: float | None,
    runtime: float | None,
    outcome: str = "succeeded",
    *,
    worker: str = W1,
    **sent_fields: Any,
) -> list[Event]:
    """Sent at ``sent``; started ``wait`` later (``None``: not yet); finished with
    ``outcome`` ``runtime`` after that (``None``: still running)."""
    task = Task(task_id, name)
    found = [task.sent(sent, **sent_fields)]
    if wait is None:
        return found
    found.append(task.received(sent + wait / 2, worker))
    found.append(task.started(sent + wait, worker))
    if runtime is None:
        return found
    end = sent + wait + runtime
    if outcome == "succeeded":
        found.append(task.ended("succeeded", end, worker, retries=0, runtime=runtime, result=1))
    else:
        failure = {"exc_type": "ValueError", "exc_message": "boom", "traceback": "Traceback"}
        found.append(task.ended("failed", end, worker, retries=0, runtime=runtime, **failure))
    return found


def mixed(now: float) -> list[Event]:
    """Thirty tasks over the last 40 minutes and three older than a day: two names, two
    queues, two workers, every kind of end; ties of run time and of wait on purpose."""
    events: list[Event] = []
    for n in range(24):
        name = "shop.report" if n % 2 else "shop.mail"
        queue = "slow" if n % 3 == 0 else "celery"
        worker = W1 if n % 4 else W2
        outcome = "failed" if n % 5 == 0 else "succeeded"
        sent = now - 2400 + n * 60
        wait = float(n % 7)  # 0 .. 6 s: ties
        runtime = float((n * 7) % 11) + 0.5  # ties too
        events += run(f"t-{n:02}", name, sent, wait, runtime, outcome, worker=worker, queue=queue)
    for n in range(3):  # running for 10 min and more: longer than any finished one
        events += run(f"r-{n}", "shop.report", now - 1800 - n * 100, 2.0, None, queue="slow")
    for n in range(3):  # waiting since 5 min and more: a longer wait than any started one
        events += run(f"w-{n}", "shop.report", now - 300 - n * 50, None, None, queue="slow")
    for n in range(3):  # older than a day: outside the default window
        events += run(f"old-{n}", "shop.report", now - 90_000 - n, 500.0, 9000.0)
    return events


def key(row: dict[str, Any], sort: str, now: float) -> float | None:
    """What the list ranks ``row`` by, as its docs say, computed here in Python."""
    if sort == "runtime":
        if row["runtime"] is not None:
            return float(row["runtime"])
        if row["state"] == "STARTED" and row["started_at"] is not None:
            return now - float(row["started_at"])
        return None
    if row["sent_at"] is None:
        return None
    if row["started_at"] is not None:
        return max(float(row["started_at"]) - float(row["sent_at"]), 0.0)
    if row["state"] in ("PENDING", "RECEIVED"):
        return now - float(row["sent_at"])
    return None


def python_sorted(rows: list[dict[str, Any]], sort: str, now: float) -> list[str]:
    """Longest first, ties by id descending, nothing to rank by last."""

    def rank(row: dict[str, Any]) -> tuple[bool, float, str]:
        found = key(row, sort, now)
        return (found is not None, found or 0.0, row["id"])

    return [row["id"] for row in sorted(rows, key=rank, reverse=True)]


def listed(client: TestClient, **query: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ok(client, "/api/tasks", limit=LIMIT, **query)["tasks"]
    assert len(rows) < LIMIT
    return rows


@pytest.fixture
def shop(site: Site) -> tuple[TestClient, float]:
    now = time.time()
    return site(mixed(now)), now


# -- so far ------------------------------------------------------------------------------


def test_a_waiting_task_shows_its_wait_so_far_and_a_finished_one_its_wait(site: Site) -> None:
    now = time.time()
    client = site([
        *run("waiting", "shop.mail", now - 41, None, None),
        *run("running", "shop.mail", now - 100, 0.25, None),
        *run("done", "shop.mail", now - 200, 0.5, 2.0),
    ])  # fmt: skip
    soup = page(client, "/executions")
    late = math.ceil(time.time() - now)  # seconds the page may have been rendered after now
    assert text(one(soup, "tr#task-waiting td.wait")) in [
        f"{s} s so far" for s in range(41, 42 + late)
    ]
    assert text(one(soup, "tr#task-done td.wait")) == "500 ms"
    assert text(one(soup, "tr#task-running td.wait")) == "250 ms"
    assert text(one(soup, "tr#task-running td.runtime")) in [
        f"1 min {s} s so far" for s in range(40, 41 + late)
    ]
    assert text(one(soup, "tr#task-done td.runtime")) == "2.00 s"
    assert text(one(soup, "tr#task-waiting td.runtime")) == "—"
    # the API keeps measured values only: a wait so far is the page's, as of its time
    by_id = {row["id"]: row for row in listed(client)}
    assert by_id["waiting"]["queue_wait"] is None
    assert by_id["done"]["queue_wait"] == pytest.approx(0.5)


# -- ETA ---------------------------------------------------------------------------------


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


def test_the_eta_column_shows_only_when_a_task_on_the_page_has_one(site: Site) -> None:
    now = float(int(time.time()))
    client = site([
        *run("plain", "shop.plain", now - 30, 0.1, 1.0),
        *run("later", "shop.later", now - 20, None, None, eta=iso(now + 3600)),
        *run("late", "shop.later", now - 10, None, None, eta=iso(now - 120)),
        *run("ran", "shop.later", now - 5, 1.0, None, eta=iso(now - 4)),
    ])  # fmt: skip
    soup = page(client, "/executions")
    assert [text(th) for th in soup.select("thead th")][-2:] == ["ETA", "Error"]
    later = text(one(soup, "tr#task-later td.eta"))
    assert later.startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now + 3600)))
    due = [f"due in 59 min {s} s" for s in range(40, 60)]
    assert text(one(soup, "tr#task-later td.eta .due")) in ["due in 1 h", *due]
    assert text(one(soup, "tr#task-late td.eta .due")).startswith("overdue by 2 min")
    assert one(soup, "tr#task-ran td.eta").select(".due") == []  # started: nothing is due
    assert text(one(soup, "tr#task-plain td.eta")) == "—"
    # a page without any ETA has no such column
    plain = page(client, "/executions", name="shop.plain")
    assert row_ids(plain) == ["plain"]
    assert plain.select("th.eta, td.eta") == []
    assert [text(th) for th in plain.select("thead th")][-1] == "Error"
    # the live refresh of a page whose header lacks the column reloads the whole page
    live = str(one(plain, "tbody#rows")["hx-get"])
    assert parse_qs(urlsplit(live).query)["cols"] == ["none"]
    refresh = client.get("/executions", params={"cols": "none"}, headers=htmx("rows"))
    assert refresh.headers["HX-Refresh"] == "true"
    same = client.get("/executions", params={"cols": "eta"}, headers=htmx("rows"))
    assert "HX-Refresh" not in same.headers and len(row_ids(html(same))) == 4


@pytest.mark.parametrize(
    "eta",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        "2030-13-45T99:00:00",
        "tomorrow",
        "9" * 200,
    ],
)
def test_an_eta_that_is_not_a_time_shows_as_given_and_escaped(site: Site, eta: str) -> None:
    client = site(run("odd", "shop.odd", time.time() - 5, None, None, eta=eta))
    response = client.get("/executions")
    soup = html(response)
    assert_no_active_content(soup)
    cell = one(soup, "tr#task-odd td.eta")
    assert cell.select("img, script") == []
    shown = text(one(cell, ".not-a-time"))
    assert shown == (eta if len(eta) <= 80 else eta[:80] + "…")
    assert cell.select(".due") == []
    assert eta not in response.text or "<" not in eta  # markup only ever escaped


# -- sorting -----------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["runtime", "wait"])
@pytest.mark.parametrize(
    "query",
    [
        {},
        {"since": "1h"},
        {"name": "shop.report"},
        {"state": "SUCCESS"},
        {"state": ["FAILURE", "STARTED"]},
        {"name": "shop.report", "state": "SUCCESS", "since": "30m"},
        {"queue": "slow"},
        {"worker": W2, "since": "7d"},
        {"since": "40m", "until": "10m"},
        {"q": "shop.mail"},
    ],
)
def test_a_sort_gives_the_python_order_of_the_same_rows(
    shop: tuple[TestClient, float], sort: str, query: dict[str, Any]
) -> None:
    client, _ = shop
    window = {"since": "24h"} if "since" not in query else {}
    rows = listed(client, **query, **window)
    answer = ok(client, "/api/tasks", limit=LIMIT, sort=sort, **query)
    now = time.time()
    assert [row["id"] for row in answer["tasks"]] == python_sorted(rows, sort, now)
    assert len(rows) > 1
    assert answer["window"]["defaulted"] is ("since" not in query)
    # the page gives the same order, and says which sort it is
    soup = page(client, "/executions", limit=LIMIT, sort=sort, **query)
    assert row_ids(soup) == python_sorted(rows, sort, now)
    label = {"runtime": "run time", "wait": "queue wait"}[sort]
    assert text(one(soup, "p.sorted-by")).startswith(f"Sorted by {label}, longest first")


def test_without_a_window_a_sort_covers_the_last_24_hours_and_says_so(
    shop: tuple[TestClient, float],
) -> None:
    client, now = shop
    soup = page(client, "/executions", sort="runtime", name="shop.report")
    assert not [i for i in row_ids(soup) if i.startswith("old-")]
    assert "no window was given, so a sort covers the last 24 h" in text(one(soup, "p.sorted-by"))
    week = page(client, "/executions", sort="runtime", name="shop.report", since="7d")
    assert row_ids(week)[:3] == ["old-2", "old-1", "old-0"]  # 9000 s each: ties by id
    assert "no window" not in text(one(week, "p.sorted-by"))
    window = ok(client, "/api/tasks", sort="wait")["window"]
    assert window["since"] == pytest.approx(now - 86400, abs=60)
    assert window["until"] is None


@pytest.mark.parametrize("sort", ["runtime", "wait"])
def test_paging_through_a_sorted_list_gives_every_row_once(
    shop: tuple[TestClient, float], sort: str
) -> None:
    client, _ = shop
    every = [row["id"] for row in ok(client, "/api/tasks", sort=sort, limit=LIMIT)["tasks"]]
    assert len(every) == 30
    # the API: next_cursor with the window it answered
    first = ok(client, "/api/tasks", sort=sort, limit=4)
    since, seen, cursor = first["window"]["since"], [r["id"] for r in first["tasks"]], None
    cursor = first["next_cursor"]
    while cursor:
        more = ok(client, "/api/tasks", sort=sort, limit=4, since=str(since), cursor=cursor)
        seen += [row["id"] for row in more["tasks"]]
        cursor = more["next_cursor"]
        assert len(seen) <= 40
    assert seen == every
    # the page: its "Next" links, which pin the window
    url: str | None = f"/executions?sort={sort}&limit=7"
    shown: list[str] = []
    while url:
        soup = page(client, url)
        shown += row_ids(soup)
        following = soup.select("nav.pager a[rel=next]")
        url = str(following[0]["href"]) if following else None
        if url:
            assert text(following[0]) == "Next →"
            assert parse_qs(urlsplit(url).query)["sort"] == [sort]
    assert shown == every
    assert len(set(shown)) == len(shown)


@pytest.mark.parametrize("url", ["/api/tasks", "/executions"])
@pytest.mark.parametrize("bad", ["slowest", "runtime DESC", "seen_at", "Runtime"])
def test_an_unknown_sort_is_refused_naming_the_parameter(
    shop: tuple[TestClient, float], url: str, bad: str
) -> None:
    """422, as every other bad parameter of the list (a state, a time, a cursor)."""
    client, _ = shop
    response = client.get(url, params={"sort": bad})
    assert response.status_code == 422
    expected = f"sort must be one of runtime, wait (longest first), not {bad!r}"
    if url.startswith("/api"):
        assert response.json()["detail"] == expected
    else:
        assert text(one(html(response, 422), "p.error[role=alert]")) == expected


def test_a_cursor_of_another_order_is_refused(shop: tuple[TestClient, float]) -> None:
    client, _ = shop
    newest = ok(client, "/api/tasks", limit=2)["next_cursor"]
    by_wait = ok(client, "/api/tasks", limit=2, sort="wait")["next_cursor"]
    for sort, cursor in (("runtime", newest), ("runtime", by_wait), ("wait", "garbage")):
        response = client.get("/api/tasks", params={"sort": sort, "cursor": cursor})
        assert response.status_code == 422
        assert "invalid cursor" in response.json()["detail"]


def test_column_headers_sort_keeping_the_filters(shop: tuple[TestClient, float]) -> None:
    client, _ = shop
    query = {"name": "shop.report", "state": "SUCCESS", "queue": "slow", "since": "1h"}
    soup = page(client, "/executions", **query)
    seen = one(soup, "th.sort-seen")
    assert seen["aria-sort"] == "descending"
    assert not one(soup, "th.sort-runtime").has_attr("aria-sort")
    href = str(one(soup, "th.sort-runtime a")["href"])
    assert parse_qs(urlsplit(href).query) == {
        "name": ["shop.report"], "state": ["SUCCESS"], "queue": ["slow"], "since": ["1h"],
        "sort": ["runtime"], "limit": ["50"],
    }  # fmt: skip
    ranked = page(client, href)
    assert one(ranked, "th.sort-runtime")["aria-sort"] == "descending"
    assert not one(ranked, "th.sort-seen").has_attr("aria-sort")
    assert "sort" not in parse_qs(urlsplit(str(one(ranked, "th.sort-seen a")["href"])).query)
    by_wait = parse_qs(urlsplit(str(one(ranked, "th.sort-wait a")["href"])).query)
    assert by_wait["sort"] == ["wait"] and by_wait["queue"] == ["slow"]
    # the filter form keeps the sort when applied again
    assert one(ranked, "form.filters input[name=sort]")["value"] == "runtime"
    assert one(ranked, "form.filters input[name=queue]")["value"] == "slow"


def test_the_queue_filter_keeps_that_queue_only(shop: tuple[TestClient, float]) -> None:
    client, _ = shop
    every = listed(client)
    slow = {row["id"] for row in every if row["queue"] == "slow"}
    assert 0 < len(slow) < len(every)
    assert [row["id"] for row in listed(client, queue="slow")] == [
        row["id"] for row in every if row["id"] in slow
    ]
    assert set(row_ids(page(client, "/executions", queue="slow"))) == slow


def test_the_task_name_page_links_to_its_slowest_of_the_last_hour(
    shop: tuple[TestClient, float],
) -> None:
    client, _ = shop
    soup = page(client, "/names/shop.report")
    link = str(one(soup, "a.slowest")["href"])
    assert text(one(soup, "a.slowest")) == "its slowest of the last hour"
    assert parse_qs(urlsplit(link).query) == {
        "name": ["shop.report"], "sort": ["runtime"], "since": ["1h"],
    }  # fmt: skip
    rows = listed(client, name="shop.report", since="1h")
    assert row_ids(page(client, link)) == python_sorted(rows, "runtime", time.time())[:50]


# -- the plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["runtime", "wait"])
@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "tasks_seen"),
        ({"name": "shop.report"}, "tasks_name"),
        ({"states": ("SUCCESS", "FAILURE")}, "tasks_state"),
        ({"worker": W1, "until": 2e9}, "tasks_worker"),
        ({"queue": "slow", "q": "report"}, "tasks_seen"),
    ],
)
def test_a_sorted_page_reads_the_window_through_an_index(
    shop: tuple[TestClient, float], db_path: Any, sort: str, filters: dict[str, Any], index: str
) -> None:
    _, now = shop
    chosen = TaskFilters(since=now - 3600, sort=sort, **filters)
    where, params = _where(chosen)
    sql, bound, _ = page_sql(LIST_COLUMNS, where, params, sort, None, 50)
    with sqlite3.connect(db_path) as conn:
        plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", bound)]
    assert plan[0].startswith(f"SEARCH tasks USING INDEX {index} ("), plan
    assert "seen_at>?" in plan[0], plan
    assert not [line for line in plan if line.startswith("SCAN")], plan


def test_window_links_keep_the_filters_and_a_refused_filter_gets_none(
    shop: tuple[TestClient, float],
) -> None:
    client, _ = shop
    soup = page(client, "/executions", name="shop.report", sort="wait", until="10m")
    windows = {text(a): str(a["href"]) for a in soup.select("nav.ranges a")}
    assert list(windows) == ["15 min", "1 h", "6 h", "24 h", "7 d"]
    hour = parse_qs(urlsplit(windows["1 h"]).query)
    assert hour == {"name": ["shop.report"], "sort": ["wait"], "since": ["1h"], "limit": ["50"]}
    chosen = page(client, windows["1 h"])
    assert text(one(chosen, "nav.ranges a[aria-current=page]")) == "1 h"
    # links that would keep a bad parameter are not offered
    refused = page(client, "/executions", 422, sort="wait", state="DONE")
    assert refused.select("nav.ranges, thead a") == []
    assert [text(th) for th in refused.select("th.sortable")] == ["Seen", "Queued", "Runtime"]
