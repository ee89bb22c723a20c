"""One worker's page and ``GET /api/workers/{hostname}``: its heartbeat gaps (written at
ingest, untouched by late or re-delivered events), what it runs, holds and has
scheduled, its failures; the page and the API agree, hostile text stays text."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stemtrace.core.events import Event
from stemtrace.store import Backend, Upkeep
from stemtrace.store.schema import Store
from tests.factories import W1, W2, Task, exception, lifecycle, ok, worker_event
from tests.site import (
    Site,
    assert_no_active_content,
    html,
    htmx,
    links,
    one,
    page,
    text,
    vary,
)

NOW = time.time()


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Each test's own now: a module-level time goes stale in a long run, and a worker
    last heard of minutes before its test runs is lost, not online."""
    global NOW
    NOW = time.time()


FREQ = 2.0


def beat(ts: float, worker: str = W1) -> Event:
    return worker_event("worker_heartbeat", worker, ts, freq=FREQ, active=0, dropped=0)


def online(ts: float, worker: str = W1, **fields: Any) -> Event:
    defaults = {"freq": FREQ, "tasks": [], "pool": "prefork", "concurrency": 4,
                "sw_ver": "5.7.0", "queues": ["celery", "mail"]}  # fmt: skip
    return worker_event("worker_online", worker, ts, **{**defaults, **fields})


def offline(ts: float, worker: str = W1) -> Event:
    return worker_event("worker_offline", worker, ts, dropped=0)


def gaps(store: Backend, worker: str = W1) -> list[tuple[float, float]]:
    found = store.worker(worker, since=0.0, now=NOW + 86400)
    assert found is not None
    return [(g["start"], g["end"]) for g in found["gaps"]]


def ingest(store: Backend, *batches: list[Event]) -> None:
    writer = store.open_writer()
    for batch in batches:
        writer.ingest(batch)


T = NOW - 3600
STEADY = [online(T), *(beat(T + n * FREQ) for n in range(1, 11))]  # up to T + 20


def test_a_silence_longer_than_its_heartbeats_allow_is_a_gap(backend: Backend) -> None:
    after = [beat(T + 100), beat(T + 102), beat(T + 104.9)]  # 2.9 s: within 2.5 beats
    ingest(backend, STEADY, after)
    assert gaps(backend) == [(T + 20, T + 100)]


def test_gaps_do_not_change_when_the_stream_is_read_again_or_shuffled(backend: Backend) -> None:
    stream = [*STEADY, beat(T + 100), beat(T + 102), offline(T + 110), online(T + 111)]
    stream += [beat(T + 113), beat(T + 300)]
    ingest(backend, stream)
    # silent, away (a restart), silent again
    expected = [(T + 20, T + 100), (T + 102, T + 110), (T + 110, T + 111), (T + 113, T + 300)]
    assert gaps(backend) == expected
    ingest(backend, stream, stream[::-1], [e for e in stream if e["kind"] == "worker_heartbeat"])
    assert gaps(backend) == expected
    shuffled = list(stream)
    random.Random(7).shuffle(shuffled)
    ingest(backend, *([e] for e in shuffled))  # re-delivered one by one, in any order
    assert gaps(backend) == expected


def test_a_late_heartbeat_makes_no_gap_and_closes_the_one_it_falls_in(backend: Backend) -> None:
    # The batch with T + 100 is read before the heartbeats between: a gap, for now.
    ingest(backend, STEADY, [beat(T + 100)])
    assert gaps(backend) == [(T + 20, T + 100)]
    ingest(backend, [beat(T + n * FREQ) for n in range(11, 25)])  # up to T + 48
    assert gaps(backend) == [(T + 48, T + 100)]
    ingest(backend, [beat(T + n * FREQ) for n in range(25, 50)])  # the rest arrive
    assert gaps(backend) == []
    ingest(backend, [beat(T + 10)])  # a re-delivered old heartbeat: nothing
    assert gaps(backend) == []


def test_only_the_workers_own_events_end_a_silence(backend: Backend) -> None:
    # A solo pool busy on a long task sends no heartbeat, while its task's events come.
    task = Task("busy", "proj.slow")
    ingest(backend, STEADY, [task.started(T + 21, W1), beat(T + 62)],
           [task.ended("succeeded", T + 60, W1)])  # fmt: skip
    assert gaps(backend) == [(T + 20, T + 62)]


def test_an_unknown_heartbeat_period_allows_a_minute(backend: Backend) -> None:
    slow = [worker_event("worker_heartbeat", W2, T + t, active=0, dropped=0) for t in (0, 59, 130)]
    ingest(backend, slow)
    assert gaps(backend, W2) == [(T + 59, T + 130)]


def test_every_workers_running_tasks_are_its_own_newest(backend: Backend) -> None:
    """The workers read lists each one's started tasks, the newest first and 100 at most
    (SQLite looks each worker's up, PostgreSQL reads them all in one statement: both give
    each worker its own newest 100, past the 100 of two busy workers)."""
    hosts = [f"celery@w{n:03}" for n in range(103)]
    events: list[Event] = [online(NOW - 60, host) for host in hosts]
    started: dict[str, list[str]] = {}
    for n, host in enumerate(hosts[::-1]):
        for k in range(102 if n in (0, 101) else n % 3):
            task = Task(f"run-{host}-{k:03}", "proj.slow")
            events.append(task.started(NOW - 50 + k * 0.1, host))
            started.setdefault(host, []).insert(0, task.id)
    done = Task("done", "proj.slow")
    events += [done.started(NOW - 50, hosts[1]), done.ended("succeeded", NOW - 49, hosts[1])]
    ingest(backend, events)
    found = {w["hostname"]: [r["id"] for r in w["running"]] for w in backend.workers(NOW)}
    assert sorted(found) == hosts
    assert found == {host: started.get(host, [])[:100] for host in hosts}
    assert len(found[hosts[-1]]) == len(found[hosts[1]]) == 100


def test_retention_forgets_old_gaps(db_path: Path) -> None:
    store = Store(db_path)
    try:
        old = [online(T - 86400), beat(T - 86300), beat(T - 86000)]
        new = [beat(T), beat(T + 300)]
        ingest(store, old, new, lifecycle("t-old", "proj.add", T - 86400),
               lifecycle("t-new", "proj.add", T))  # fmt: skip
        assert gaps(store) == [(T - 86400, T - 86300), (T - 86300, T - 86000), (T - 86000, T),
                               (T, T + 300)]  # fmt: skip
        writer = store.open_writer(upkeep=Upkeep(max_age=12 * 3600))
        writer.upkeep(caught_up=True)
        assert gaps(store) == [(T - 86000, T), (T, T + 300)]
    finally:
        store.close()


# -- the page and the API ------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def fleet_events() -> list[Event]:
    """W1 runs one task, holds one, has two with an ETA (one overdue) and one waiting to
    retry, and failed twice; W2 runs and fails one of its own."""
    retrying = Task("retry-1", "proj.fetch")
    waiting = [
        retrying.sent(NOW - 80),
        retrying.received(NOW - 79, W1),
        retrying.started(NOW - 78, W1),
        retrying.ended("retry", NOW - 77, W1, retries=0, attempt=1, retry_at=NOW + 30,
                       runtime=1.0, **exception("Timeout", "read timed out")),
    ]  # fmt: skip
    soon, late, held = (
        Task("eta-soon", "proj.remind"),
        Task("eta-late", "proj.remind"),
        Task("held-1", "proj.add"),
    )
    return [
        online(NOW - 600, queues=["celery", "mail/urgent"]),
        beat(NOW - 300),
        beat(NOW - 4),
        beat(NOW - 2),
        online(NOW - 600, W2),
        *lifecycle("run-1", "proj.slow", NOW - 100, "STARTED"),
        held.sent(NOW - 50),
        held.received(NOW - 49, W1),
        soon.sent(NOW - 40, eta=_iso(NOW + 120)),
        soon.received(NOW - 39, W1, eta=_iso(NOW + 120)),
        late.sent(NOW - 200, eta=_iso(NOW - 90)),
        late.received(NOW - 199, W1, eta=_iso(NOW - 90)),
        *waiting,
        *lifecycle("fail-1", HOSTILE, NOW - 1000, "FAILURE", exc=("Bad<b>", "<img src=x>")),
        *lifecycle("fail-2", "proj.charge", NOW - 500, "FAILURE", exc=("Declined", "no funds")),
        *lifecycle("other-run", "proj.slow", NOW - 100, "STARTED", worker=W2),
        *lifecycle("other-fail", "proj.add", NOW - 100, "FAILURE", worker=W2),
    ]


def section_ids(soup: Any, section: str) -> list[str]:
    return [str(tr["data-task"]) for tr in soup.select(f"#{section} tr[data-task]")]


def worker_url(hostname: str, api: bool = False) -> str:
    return ("/api" if api else "") + "/workers/" + quote(hostname, safe="")


def test_the_page_lists_what_the_worker_runs_holds_schedules_and_failed(site: Site) -> None:
    client = site(fleet_events())
    soup = page(client, worker_url(W1))
    assert text(one(soup, "h1")) == W1
    assert text(one(soup, "#worker-state")).endswith("online")
    assert section_ids(soup, "running") == ["run-1"]
    assert text(one(soup, "#running td.elapsed")).endswith("s")
    assert section_ids(soup, "held") == ["held-1"]
    assert section_ids(soup, "scheduled") == ["eta-late", "retry-1", "eta-soon"]  # soonest first
    dues = [text(td) for td in soup.select("#scheduled td.due")]
    assert dues[0].startswith("overdue by 1 min") and dues[1].startswith("in ")
    assert dues[2].startswith("in 1 min") or dues[2].startswith("in 2 min")
    assert section_ids(soup, "failures") == ["fail-2", "fail-1"]  # newest first, W1's only
    assert text(one(soup, "#pool")) == "prefork \N{MULTIPLICATION SIGN} 4"
    assert text(one(soup, "#software")) == "celery 5.7.0"
    assert [text(a) for a in soup.select("#queues .queue")] == ["celery", "mail/urgent"]
    # Two silences: after the online event, and after the heartbeat 300 s ago.
    assert len(soup.select("#heartbeats svg rect.gap")) == 2
    assert len(soup.select("#heartbeats li.gap")) == 2
    assert soup.select("#processed svg rect.chart-bar")  # the two failures, in the last hour


def test_hostile_text_stays_text(site: Site) -> None:
    soup = page(site(fleet_events()), worker_url(W1))
    assert_no_active_content(soup)
    assert HOSTILE in text(one(soup, "#failures"))
    assert "Bad<b>" in text(one(soup, "#failures")) and "<img src=x>" in text(
        one(soup, "#failures")
    )
    assert not soup.select("#failures img, #failures b")


def test_the_api_says_what_the_page_shows(site: Site) -> None:
    client = site(fleet_events())
    soup = page(client, worker_url(W1))
    found = ok(client, worker_url(W1, api=True))
    assert found["worker"]["hostname"] == W1
    assert found["worker"]["state"] == "online"
    for section in ("running", "held", "scheduled", "failures"):
        assert [t["id"] for t in found[section]] == section_ids(soup, section), section
    assert [t["due"] for t in found["scheduled"]] == sorted(t["due"] for t in found["scheduled"])
    assert found["scheduled"][0]["due_in"] < 0 < found["scheduled"][1]["due_in"]
    assert found["scheduled"][1]["due"] == pytest.approx(NOW + 30)  # the retry's next attempt
    assert [(g["start"], g["end"]) for g in found["gaps"]] == [
        (pytest.approx(NOW - 600), pytest.approx(NOW - 300)),
        (pytest.approx(NOW - 300), pytest.approx(NOW - 4)),
    ]
    assert len(found["gaps"]) == len(soup.select("#heartbeats li.gap"))
    assert sum(p["failed"] for p in found["points"]) == 2
    assert found["running"][0]["elapsed"] == pytest.approx(time.time() - (NOW - 99.8), abs=5)
    assert ok(client, worker_url(W2, api=True))["failures"][0]["id"] == "other-fail"


def test_an_unknown_worker_is_the_404_page(site: Site) -> None:
    client = site(fleet_events())
    soup = page(client, worker_url("celery@nowhere"), 404)
    assert "celery@nowhere" in text(one(soup, "h1"))
    response = client.get(worker_url("celery@nowhere", api=True))
    assert response.status_code == 404
    assert "celery@nowhere" in response.json()["detail"]
    assert client.get(worker_url(W1, api=True), params={"range": "5y"}).status_code == 422


@pytest.mark.parametrize("hostname", ["celery@a/b", "w?x=1#top@host", "100%@h", "é 名@h"])
def test_any_hostname_reaches_its_page_from_the_workers_page(site: Site, hostname: str) -> None:
    client = site([online(NOW - 10, hostname)])
    listing = page(client, "/workers")
    [href] = [h for h in links(listing) if h.startswith("/workers/")]
    soup = page(client, href)
    assert text(one(soup, "h1")) == hostname
    assert (
        ok(client, href.replace("/workers/", "/api/workers/", 1))["worker"]["hostname"] == hostname
    )


def test_a_silent_worker_shows_an_open_gap(site: Site) -> None:
    client = site([online(NOW - 900), beat(NOW - 898)])
    found = ok(client, worker_url(W1, api=True))
    assert found["worker"]["state"] == "lost"
    assert found["gaps"][-1]["end"] is None
    assert found["gaps"][-1]["start"] == pytest.approx(NOW - 898)
    soup = page(client, worker_url(W1))
    assert "now" in text(one(soup, "#heartbeats li.gap"))


def test_a_tasks_worker_links_to_its_page(site: Site) -> None:
    client = site(fleet_events())
    target = worker_url(W1)
    assert target in links(page(client, "/tasks/run-1"))
    rows = page(client, "/executions", worker=W1)
    assert target in [str(a["href"]) for a in rows.select("tr[id^=task-] a.worker-link")]
    assert target in links(page(client, "/workers"))


def test_the_page_refreshes_its_lists_alone(site: Site) -> None:
    client = site(fleet_events())
    soup = page(client, worker_url(W1))
    live = one(soup, "#worker-live")
    assert live["hx-trigger"].startswith("every ")
    response = client.get(str(live["hx-get"]), headers=htmx("worker-live"))
    part = html(response)
    assert part.find("html") is None and not part.select("h1")
    assert section_ids(part, "running") == section_ids(soup, "running") == ["run-1"]
    assert section_ids(part, "held") == ["held-1"]
    assert {"hx-request", "hx-target"} <= set(vary(response))
