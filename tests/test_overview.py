"""The overview page and ``GET /api/stats``: their numbers against the tasks table.

A workload with known counts goes through the store's writer (as the consumer
writes it); each test counts what it expects with SQL on the ``tasks`` table
and compares with the API's points, the charts' hover titles, the lists beside
them and the executions a click opens.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from bs4 import BeautifulSoup, Tag
from starlette.testclient import TestClient

from stemtrace.core import buckets
from stemtrace.core.events import Event
from stemtrace.server import stats
from tests.factories import W1, W2, lifecycle, ok
from tests.site import Site, assert_no_active_content, html, htmx, one, page, row_ids, text, vary

HOSTILE = "<script>alert(1)</script>\"'&"
HOSTILE_QUEUE = "q<b>\"'"


def first_minute() -> int:
    """The workload's first minute: 40 minutes ago, so it all falls in the last hour."""
    return int(time.time() // 60) * 60 - 40 * 60


def workload(m0: int) -> list[Event]:
    """Tasks sent 5 s into their minute from ``m0`` on, each finished within that minute;
    and earlier runs of proj.b, three hours before: its usual run time."""
    found: list[Event] = []

    def add(n: int, name: str, minute: int, outcome: str, **kw: Any) -> None:
        found.extend(lifecycle(f"{name}-{minute}-{n}-{outcome}", name, m0 + minute * 60 + 5 + n,
                               outcome, **kw))  # fmt: skip

    for n in range(6):
        add(n, "proj.a", 0, "SUCCESS", worker=W1, runtime=0.05 * (n + 1))
    for n in range(2):
        add(n, "proj.a", 0, "FAILURE", worker=W2, runtime=0.3)
    for n in range(3):
        add(n, "proj.a", 5, "FAILURE", worker=W1 if n else W2, runtime=1.0 + n)
    add(0, "proj.a", 5, "SUCCESS", worker=W1, runtime=0.5)
    for n in range(4):
        add(n, "proj.b", 10, "SUCCESS", worker=W2, runtime=2.0 + n)
    add(9, "proj.b", 10, "RETRY", worker=W2, runtime=0.4)
    add(0, HOSTILE, 20, "FAILURE", worker=W1, runtime=0.2, queue=HOSTILE_QUEUE)
    add(1, HOSTILE, 20, "SUCCESS", worker=W1, runtime=0.2, queue=HOSTILE_QUEUE)
    add(0, "proj.c", 30, "REVOKED", worker=W1)
    add(0, "proj.c", 31, "STARTED", worker=W1)
    for n in range(5):  # long ago: proj.b usually runs in a tenth of a second
        found.extend(lifecycle(f"old-b-{n}", "proj.b", m0 - 3 * 3600 + n * 7, runtime=0.1))
    return found


def tasks_table(db_path: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(f"SELECT * FROM tasks WHERE {where}", params))


def expected_points(
    rows: list[sqlite3.Row], since: float, step: int, *, by_worker: bool = False
) -> dict[int, dict[str, Any]]:
    """Per step: each outcome counted at the time it happened, the exact waits and runs.

    Sent tasks are not counted per worker (none has the task yet when it is sent).
    """
    points: dict[int, dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(stats.OUTCOMES, 0), "waits": [], "runs": []}
    )
    first = int(since // step) * step

    def slot(ts: float) -> dict[str, Any]:
        return points[first + int((ts - first) // step) * step]

    for r in rows:
        if r["sent_at"] is not None and not by_worker:
            slot(r["sent_at"])["sent"] += 1
        if r["started_at"] is not None:
            slot(r["started_at"])["started"] += 1
            if r["sent_at"] is not None:
                slot(r["started_at"])["waits"].append(r["started_at"] - r["sent_at"])
        if r["state"] in ("SUCCESS", "FAILURE"):
            outcome = "succeeded" if r["state"] == "SUCCESS" else "failed"
            slot(r["finished_at"])[outcome] += 1
            slot(r["finished_at"])["runs"].append(r["runtime"])
        if r["state"] == "REVOKED":
            slot(r["state_ts"])["revoked"] += 1
        if r["retries"]:
            slot(r["state_ts"])["retried"] += r["retries"]
    return points


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(-(-q * len(ordered) // 1)) - 1, 0)]


def assert_in_its_bucket(found: float | None, exact: list[float], q: float) -> None:
    """``found`` lies in the bucket of the exact percentile: off by at most its width."""
    if not exact:
        assert found is None
        return
    bucket = buckets.index(nearest_rank(exact, q))
    assert bucket is not None and found is not None
    assert buckets.lower(bucket) - 1e-9 <= found <= buckets.BOUNDS[bucket] + 1e-9, (found, exact)


@pytest.fixture
def m0() -> int:
    return first_minute()


@pytest.fixture
def client(site: Site, m0: int) -> TestClient:
    return site(workload(m0))


# -- GET /api/stats -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "params", "query"),
    [
        ("1", (), {}),
        ("name = ?", ("proj.a",), {"name": "proj.a"}),
        ("worker = ?", (W2,), {"worker": W2}),
        ("queue = ?", (HOSTILE_QUEUE,), {"queue": HOSTILE_QUEUE}),
        ("name = ?", (HOSTILE,), {"name": HOSTILE}),
    ],
)
@pytest.mark.parametrize("step", [60, 300])
def test_stats_points_equal_the_tasks_table(
    client: TestClient,
    m0: int,
    db_path: Path,
    where: str,
    params: tuple[Any, ...],
    query: dict[str, str],
    step: int,
) -> None:
    since, until = m0 - 120, m0 + 35 * 60
    found = ok(client, "/api/stats", since=str(since), until=str(until), step=step, **query)
    assert (found["since"], found["until"], found["step"]) == (since, until, step)
    assert found["filter"] == query
    rows = tasks_table(db_path, where, params)
    expected = expected_points(rows, since, step, by_worker="worker" in query)
    points = found["points"]
    assert [p["t"] for p in points] == list(range(int(since // step) * step, until, step))
    assert any(p["failed"] for p in points)
    for p in points:
        want = expected.get(p["t"], {**dict.fromkeys(stats.OUTCOMES, 0), "waits": [], "runs": []})
        assert {k: p[k] for k in stats.OUTCOMES} == {k: want[k] for k in stats.OUTCOMES}, p["t"]
        finished = want["succeeded"] + want["failed"]
        assert p["failure_rate"] == (want["failed"] / finished if finished else None)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert_in_its_bucket(p[f"wait_{name}"], want["waits"], q)
            assert_in_its_bucket(p[f"run_{name}"], want["runs"], q)


def test_stats_default_to_the_last_hour_by_minute(client: TestClient, db_path: Path) -> None:
    found = ok(client, "/api/stats")
    assert found["step"] == 60
    assert found["until"] - found["since"] == pytest.approx(3600, abs=5)
    assert len(found["points"]) in (60, 61)
    failed = tasks_table(db_path, "state = 'FAILURE'")
    assert sum(p["failed"] for p in found["points"]) == len(failed) == 6


@pytest.mark.parametrize(
    ("since", "step", "points"), [("15m", 60, 16), ("24h", 300, 289), ("7d", 1800, 337)]
)
def test_the_default_step_gives_at_most_360_round_points(
    client: TestClient, since: str, step: int, points: int
) -> None:
    found = ok(client, "/api/stats", since=since)
    assert found["step"] == step
    assert len(found["points"]) in (points - 1, points)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"step": "30"}, "step must be a whole number of minutes"),
        ({"step": "90"}, "step must be a whole number of minutes"),
        ({"step": "0"}, "greater than or equal to 1"),
        ({"step": "abc"}, "valid integer"),
        ({"name": "proj.a", "queue": "celery"}, "at most one of name, queue or worker"),
        ({"queue": "celery", "worker": W1}, "at most one of name, queue or worker"),
        ({"since": "7d", "step": "60"}, "points of 60 s from since to until, more than 2000"),
        ({"since": "garbage"}, "since must be epoch seconds, an ISO-8601 time or an age"),
        ({"until": "nan"}, "until must be a finite time"),
        ({"since": "1h", "until": "2h"}, "until must be after since"),
    ],
)
def test_bad_stats_parameters_are_422_with_the_reason(
    client: TestClient, query: dict[str, str], message: str
) -> None:
    response = client.get("/api/stats", params=query)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_2000_points_are_allowed(client: TestClient, m0: int) -> None:
    found = ok(client, "/api/stats", since=str(m0), until=str(m0 + 2000 * 60), step=60)
    assert len(found["points"]) == 2000


def test_stats_are_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/stats"]["get"]
    assert operation["summary"]
    assert "failure_rate" in operation["description"]
    described = {p["name"]: p.get("description", "") for p in operation["parameters"]}
    assert set(described) == {"since", "until", "step", "name", "queue", "worker"}
    assert all(described.values()), described


# -- the overview page --------------------------------------------------------------


def hovers(soup: BeautifulSoup | Tag, chart: str) -> dict[str, dict[str, str]]:
    """Per series label, per time: the value a bar or point's title says."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for title in one(soup, f"#chart-{chart} svg").select("rect > title, circle > title"):
        label, when, value, *_ = title.get_text().split(" · ")
        found[label][when] = value
    return found


def minute_text(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def test_overview_charts_say_what_the_tasks_table_says(client: TestClient, db_path: Path) -> None:
    since = time.time() - 3600
    soup = page(client, "/")
    assert text(one(soup, "h1")) == "Overview"
    first = int(since // 60) * 60
    expected = {
        t: p for t, p in expected_points(tasks_table(db_path), since, 60).items() if t >= first
    }
    bars = hovers(soup, "throughput")
    for label in ("succeeded", "failed", "retried"):
        want = {minute_text(t): f"{p[label]:,} tasks" for t, p in expected.items() if p[label]}
        assert bars[label] == want, label
    rates = hovers(soup, "failure-rate")["failure rate"]
    for t, p in expected.items():
        finished = p["succeeded"] + p["failed"]
        if finished:
            assert rates[minute_text(t)] == f"{100 * p['failed'] / finished:.1f}%"
    assert len(rates) == sum(1 for p in expected.values() if p["succeeded"] + p["failed"])
    waits = hovers(soup, "queue-wait")["queue wait p95"]
    runs = hovers(soup, "run-time")["run time p95"]
    assert set(waits) == {minute_text(t) for t, p in expected.items() if p["waits"]}
    assert set(runs) == {minute_text(t) for t, p in expected.items() if p["runs"]}
    totals = {div["id"]: text(div.p) for div in soup.select(".overview-totals .value")}
    failed = len(tasks_table(db_path, "state = 'FAILURE'"))
    finished = len(tasks_table(db_path, "state IN ('SUCCESS', 'FAILURE') AND finished_at >= ?",
                               (since,)))  # fmt: skip
    assert totals["total-failed"] == str(failed)
    assert totals["total-finished"] == str(finished)
    assert totals["total-rate"] == f"{100 * failed / finished:.1f}%"


def test_a_failed_bar_opens_exactly_its_failed_tasks(client: TestClient, db_path: Path) -> None:
    soup = page(client, "/")
    svg = one(soup, "#chart-throughput svg")
    failed_bars = [a for a in svg.select("a[href]") if "failed ·" in a.title.get_text()]
    assert len(failed_bars) == 3  # minutes 0, 5 and 20
    for bar in failed_bars:
        assert "click: the executions first seen in this interval" in bar.title.get_text()
        href = str(bar["href"])
        assert href.startswith("/executions?")
        listed = page(client, href)
        t = int(re.search(r"since=(\d+)", href).group(1))  # type: ignore[union-attr]
        rows = tasks_table(db_path, "state = 'FAILURE' AND finished_at >= ? AND finished_at < ?",
                           (t, t + 60))  # fmt: skip
        assert sorted(row_ids(listed)) == sorted(r["id"] for r in rows)
        count = bar.title.get_text().split(" · ")[2]
        assert count == f"{len(rows)} tasks"


def test_clicks_carry_the_filter(client: TestClient, db_path: Path) -> None:
    soup = page(client, "/", name="proj.a")
    hrefs = [str(a["href"]) for a in one(soup, "#chart-throughput svg").select("a[href]")]
    assert hrefs and all("name=proj.a" in h for h in hrefs)
    for href in hrefs:
        for row in page(client, href).select("tr[id^=task-]"):
            assert "proj.a" in text(row)
    by_worker = page(client, "/", worker=W2)
    assert sum(int(v.split()[0]) for v in hovers(by_worker, "throughput")["failed"].values()) == 3
    hrefs = [str(a["href"]) for a in one(by_worker, "#chart-throughput svg").select("a[href]")]
    assert hrefs and all("worker=celery%40worker-2" in h for h in hrefs)


def test_filtered_by_queue_the_charts_link_to_that_queue_s_executions(client: TestClient) -> None:
    soup = page(client, "/", queue=HOSTILE_QUEUE)
    hrefs = [str(a["href"]) for a in one(soup, "#chart-throughput svg").select("a[href]")]
    assert hrefs and all(parse_qs(urlsplit(h).query)["queue"] == [HOSTILE_QUEUE] for h in hrefs)
    assert set(hovers(soup, "throughput")) == {"succeeded", "failed"}
    listed = [client.get(f"/api/tasks?{urlsplit(h).query}").json()["tasks"] for h in hrefs]
    assert sum(len(tasks) for tasks in listed) == 2  # the queue's two tasks, each once
    assert {task["queue"] for tasks in listed for task in tasks} == {HOSTILE_QUEUE}
    assert "same task, queue or worker" in text(one(soup, ".overview-charts > p"))


def test_the_lists_beside_the_charts(client: TestClient, db_path: Path) -> None:
    soup = page(client, "/")
    failing = [
        [text(tr.td.a), *(text(td) for td in tr.find_all("td")[1:])]
        for tr in soup.select("#failing tbody tr")
    ]
    assert failing == [["proj.a", "5", f"{100 * 5 / 12:.1f}%"], [HOSTILE, "1", "50.0%"]]
    # each with its commonest error in the range (lifecycle's failures raise ValueError: boom)
    tops = [text(div) for div in soup.select("#failing tbody tr td .top-error")]
    assert tops == ["ValueError: boom", "ValueError: boom"]
    assert "5 of its failures" in str(soup.select("#failing .top-error")[0]["title"])
    link = soup.select("#failing tbody tr a")[0]["href"]
    assert str(link).startswith("/executions?name=proj.a&state=FAILURE&since=")
    assert sorted(row_ids(page(client, str(link)))) == sorted(
        r["id"] for r in tasks_table(db_path, "name = 'proj.a' AND state = 'FAILURE'")
    )
    busiest = [[text(td) for td in tr.find_all("td")] for tr in soup.select("#busiest tbody tr")]
    assert busiest == [["proj.a", "12", "5"], ["proj.b", "4", "0"], [HOSTILE, "2", "1"]]
    slowest = soup.select("#slowest tbody tr")
    assert text(slowest[0].td) == "proj.b"  # it ran 2 to 5 s; usually a tenth of a second
    runs = [r["runtime"] for r in tasks_table(db_path, "name = 'proj.b' AND state = 'SUCCESS'")]
    now_p95 = buckets.percentile(buckets.histogram(r for r in runs if r >= 1), 0.95)
    usual_p95 = buckets.percentile(buckets.histogram(runs), 0.95)
    assert now_p95 is not None and usual_p95 is not None
    assert text(slowest[0].find_all("td")[-1]) == f"{now_p95 / usual_p95:.2f}"
    assert text(one(soup, "#slowest tbody tr:first-child td:nth-of-type(4)")) != "1.00"


def test_ranges_are_links_that_keep_the_filter(client: TestClient) -> None:
    soup = page(client, "/", range="6h", name="proj.b")
    ranges = soup.select("nav.ranges a")
    assert [text(a) for a in ranges] == ["15 min", "1 h", "6 h", "24 h", "7 d"]
    assert [str(a["href"]) for a in ranges] == [
        f"/?range={key}&name=proj.b" for key in ("15m", "1h", "6h", "24h", "7d")
    ]
    assert [a.get("aria-current") for a in ranges] == [None, None, "page", None, None]
    assert "per 5 min" in text(one(soup, "p.overview-range"))
    assert one(soup, "form.filters input[name=name]")["value"] == "proj.b"
    assert one(soup, "form.filters input[name=range]")["value"] == "6h"
    week = page(client, "/", range="7d")
    assert "per 2 h" in text(one(week, "p.overview-range"))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"name": "proj.a", "worker": W1}, "filter by at most one of name, queue or worker"),
        ({"range": "2y"}, "range must be one of 15m, 1h, 6h, 24h, 7d"),
    ],
)
def test_bad_overview_parameters_say_why(
    client: TestClient, query: dict[str, str], message: str
) -> None:
    soup = page(client, "/", 422, **query)
    assert message in text(one(soup, "p.error[role=alert]"))
    assert soup.select("svg") == []


def test_the_charts_refresh_alone_over_sse(client: TestClient) -> None:
    soup = page(client, "/", range="15m", name="proj.a")
    live = one(soup, "#overview-live")
    assert live["sse-connect"] == "/live?every=5"
    assert live["hx-get"] == "/?range=15m&name=proj.a"
    assert live["hx-trigger"] == "sse:changed"
    partial = client.get("/?range=15m&name=proj.a", headers=htmx("overview-live"))
    assert partial.status_code == 200
    block = BeautifulSoup(partial.text, "html.parser")
    assert block.find("html") is None and block.select("#overview-live") == []
    assert len(block.select("figure.chart-box svg")) == 4
    assert "hx-request" in vary(partial) and "hx-target" in vary(partial)
    assert client.get("/live", params={"every": "0.01"}).status_code == 422


def test_nav_starts_with_the_overview(client: TestClient) -> None:
    soup = page(client, "/")
    nav = soup.select("header.top nav a")
    assert [text(a) for a in nav][:2] == ["Overview", "Executions"]
    assert [str(a["href"]) for a in nav][:2] == ["/", "/executions"]
    assert nav[0].get("aria-current") == "page"
    assert one(soup, "header.top a.brand")["href"] == "/"


def test_hostile_names_stay_text(client: TestClient) -> None:
    response = client.get("/")
    assert "<script>alert" not in response.text
    soup = html(response)
    assert_no_active_content(soup)
    assert HOSTILE in [text(a) for a in soup.select("#failing a")]
    assert HOSTILE in [str(o["value"]) for o in soup.select("#task-names option")]
    assert HOSTILE_QUEUE in [str(o["value"]) for o in soup.select("#queue-names option")]
    filtered = page(client, "/", name=HOSTILE)
    assert_no_active_content(filtered)
    assert HOSTILE in text(one(filtered, "p.overview-range"))
    for svg in filtered.select("svg"):
        assert svg.find("script") is None and svg.find("foreignobject") is None
    bars = hovers(filtered, "throughput")
    assert set(bars) == {"succeeded", "failed"}
    for a in filtered.select("svg a"):
        href = str(a["href"])
        assert href.startswith("/executions?name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
        names = [text(tr.find_all("td")[1]) for tr in page(client, href).select("tr[id^=task-]")]
        assert names and set(names) == {HOSTILE}


def test_an_empty_store_says_how_to_send_tasks(site: Site) -> None:
    client = site([])
    soup = page(client, "/")
    empty = one(soup, "section.empty")
    assert "stemtrace.init(app)" in text(one(empty, "pre code"))
    assert "stemtrace demo" in text(empty)
    assert empty["sse-connect"] == "/live"  # and opens the charts once tasks arrive
    assert soup.select("svg") == []
    assert ok(client, "/api/stats")["points"][0]["failure_rate"] is None


def test_a_hostile_error_message_stays_text_beside_its_task(site: Site, m0: int) -> None:
    hostile = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
    events = lifecycle("bad-1", "proj.bad", m0 + 65, "FAILURE", exc=("<b>Oops", hostile))
    response = site(events).get("/")
    assert "<script>alert(1)" not in response.text and "<img src=x" not in response.text
    soup = html(response)
    assert_no_active_content(soup)
    [top] = soup.select("#failing .top-error")
    assert text(top).startswith("<b>Oops: <script>alert(<n>)</script>")  # normalized, as text
