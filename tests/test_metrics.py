"""``GET /metrics``: parsed with prometheus_client's own parser, checked against the API and SQL.

The store is filled through the real ingest path; every number on the page is
compared with what ``/api/registry``, ``/api/workers`` or ``/api/health``
answer, or with a count the test makes itself on the tasks table.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from stemtrace.core import buckets
from stemtrace.core.events import Event
from stemtrace.server.live import Broadcaster
from stemtrace.server.metrics import OTHER, StoreCollector, create_metrics_router
from stemtrace.server.site import Site as RouteSite
from stemtrace.store import Skip, open_store
from tests.factories import W1, W2, Task, exception, lifecycle, worker_event
from tests.site import Site, fill, site_of
from tests.test_pages import KEY, require_key

OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, url: str = "/metrics", **headers: str) -> Samples:
    """Every sample of the page by ``(sample name, sorted labels)``, read by the parser."""
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name  # every metric says what it is
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, key  # no series twice
            found[key] = sample.value
    return found


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[metric, tuple(sorted(labels.items()))]


def series(samples: Samples, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == metric}


def run(
    task_id: str, name: str, t: float, wait: float, runtime: float, kind: str = "succeeded"
) -> list[Event]:
    """A task sent at ``t``, started ``wait`` later, ended (``kind``) ``runtime`` after that."""
    task = Task(task_id, name)
    start = t + wait
    ended: dict[str, Any] = {"retries": 0, "runtime": runtime}
    ended.update(exception("ValueError", "boom") if kind == "failed" else {"result": None})
    return [
        task.sent(t),
        task.received(t + wait / 2, W1),
        task.started(start, W1),
        task.ended(kind, start + runtime, W1, **ended),
    ]


WAITS = (0.0004, 0.003, 0.2, 0.9, 5.0, 70.0)
RUNTIMES = (0.0009, 0.05, 1.0, 1.7, 33.0, 40_000.0)  # the last past the largest bound


def workload(now: float) -> list[Event]:
    """Tasks of three names in every state, with waits and run times across the buckets."""
    events: list[Event] = []
    for i, (wait, runtime) in enumerate(zip(WAITS, RUNTIMES, strict=True)):
        kind = "failed" if i % 3 == 2 else "succeeded"
        events += run(f"charge-{i}", "shop.charge", now - 3000 + i, wait, runtime, kind)
    for i in range(3):
        events += run(f"ping-{i}", "shop.ping", now - 2000 + i, 0.01 * (i + 1), 0.002)
    events += lifecycle("mail-retry", "mail.send", now - 900, "RETRY")
    events += lifecycle("mail-revoked", "mail.send", now - 800, "REVOKED")
    events += lifecycle("mail-pending", "mail.send", now - 700, "PENDING")
    events += lifecycle("mail-running", "mail.send", now - 600, "STARTED")
    events += lifecycle("mail-ok", "mail.send", now - 500, runtime=0.3)
    return events


@pytest.fixture
def client(site: Site) -> TestClient:
    return site(workload(time.time()))


def sql(db_path: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """What the test counts itself, on SQLite's tasks table."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


def test_task_counters_equal_the_tasks_table_and_the_registry(
    client: TestClient, db_path: Path
) -> None:
    samples = scrape(client)
    counted = sql(
        db_path,
        "SELECT name, COUNT(sent_at), COUNT(started_at), SUM(state = 'SUCCESS'),"
        " SUM(state = 'FAILURE'), SUM(COALESCE(retries, 0)), SUM(state IN ('REVOKED', 'REJECTED'))"
        " FROM tasks GROUP BY name",
    )
    assert {name for name, *_ in counted} == {"shop.charge", "shop.ping", "mail.send"}
    for name, *numbers in counted:
        for outcome, expected in zip(OUTCOMES, numbers, strict=True):
            got = value(samples, "stemtrace_tasks_total", name=name, outcome=outcome)
            assert got == expected, (name, outcome)
    assert value(samples, "stemtrace_tasks_total", name="mail.send", outcome="retried") == 1
    registry = {t["name"]: t["counts"] for t in client.get("/api/registry").json()["tasks"]}
    for name, counts in registry.items():
        total = value(samples, "stemtrace_tasks_total", name=name, outcome="sent")
        assert total == counts["total"], name  # every task here was sent
        for outcome in ("succeeded", "failed", "revoked"):
            assert (
                value(samples, "stemtrace_tasks_total", name=name, outcome=outcome)
                == (counts[outcome])
            ), (name, outcome)
        assert value(samples, "stemtrace_tasks_active", name=name) == counts["active"], name


def test_task_gauges_equal_the_tasks_table_now(client: TestClient, db_path: Path) -> None:
    samples = scrape(client)
    by_state = {
        (("name", name), ("state", state)): float(n)
        for name, state, n in sql(db_path, "SELECT name, state, COUNT(*) FROM tasks GROUP BY 1, 2")
    }
    assert series(samples, "stemtrace_tasks_stored") == by_state
    active = sql(
        db_path,
        "SELECT name, SUM(state NOT IN ('SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED'))"
        " FROM tasks GROUP BY name",
    )
    assert series(samples, "stemtrace_tasks_active") == {
        (("name", name),): float(n) for name, n in active
    }
    assert value(samples, "stemtrace_tasks_active", name="mail.send") == 3  # retry, pending, run


@pytest.mark.parametrize(
    ("metric", "durations"),
    [
        (
            "stemtrace_task_queue_wait_seconds",
            "SELECT name, started_at - sent_at FROM tasks WHERE started_at IS NOT NULL"
            " AND sent_at IS NOT NULL",
        ),
        (
            "stemtrace_task_runtime_seconds",
            "SELECT name, runtime FROM tasks WHERE runtime IS NOT NULL"
            " AND state IN ('SUCCESS', 'FAILURE')",
        ),
    ],
)
def test_histograms_are_cumulative_and_exact_at_every_bound(
    client: TestClient, db_path: Path, metric: str, durations: str
) -> None:
    samples = scrape(client)
    measured: dict[str, list[float]] = {}
    for name, seconds in sql(db_path, durations):
        measured.setdefault(name, []).append(seconds)
    assert set(measured) >= {"shop.charge", "shop.ping", "mail.send"}
    for name, values in measured.items():
        found = {
            dict(labels)["le"]: v
            for labels, v in series(samples, f"{metric}_bucket").items()
            if dict(labels)["name"] == name
        }
        bounds = [float(le) for le in found]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert len(bounds) == 26  # every other bound: the powers of two of milliseconds
        counts = list(found.values())
        assert counts == sorted(counts), name  # cumulative: never lower at a higher bound
        for le, count in found.items():
            assert count == sum(v <= float(le) for v in values), (name, le)
        assert found["+Inf"] == value(samples, f"{metric}_count", name=name) == len(values)
        estimate = value(samples, f"{metric}_sum", name=name)
        exact = sum(min(v, buckets.FINITE[-1]) for v in values)  # past 6.6 h counts as 6.6 h
        tiny = 0.0005 * sum(v <= 0.001 for v in values)
        assert 0.85 * exact - tiny <= estimate <= 1.21 * exact + tiny, (name, estimate, exact)
    assert value(
        samples, "stemtrace_task_runtime_seconds_bucket", name="shop.charge", le="+Inf"
    ) == (len(RUNTIMES))


def midpoint(seconds: float) -> float:
    bucket = buckets.index(seconds)
    assert bucket is not None and bucket < len(buckets.FINITE)
    return (buckets.lower(bucket) + buckets.BOUNDS[bucket]) / 2


def test_histogram_sums_count_every_duration_at_its_buckets_midpoint(site: Site) -> None:
    now = time.time()
    client = site(run("one", "solo", now - 60, 0.0015, 0.003) + run("two", "solo", now - 50, 0, 3))
    samples = scrape(client)
    runtime = value(samples, "stemtrace_task_runtime_seconds_sum", name="solo")
    assert runtime == pytest.approx(midpoint(0.003) + midpoint(3.0), rel=1e-12)
    assert midpoint(3.0) == pytest.approx((2**11 * math.sqrt(2) + 2**12) / 2 / 1000)
    wait = value(samples, "stemtrace_task_queue_wait_seconds_sum", name="solo")
    assert wait == pytest.approx(0.0005 + midpoint(0.0015), rel=1e-12)  # 0 s: (0, 1 ms] at 0.5 ms


def test_names_past_the_limit_fold_into_other(site: Site, db_path: Path) -> None:
    now = time.time()
    events: list[Event] = []
    sizes = {"busy.a": 5, "busy.b": 4, "quiet.c": 2, "quiet.d": 1, "quiet.e": 1}
    for name, size in sizes.items():
        for i in range(size):
            events += lifecycle(f"{name}-{i}", name, now - 1000 + i, runtime=0.01 * (i + 1))
    client = site(events, metrics_names=2)
    samples = scrape(client)
    names = {dict(labels)["name"] for labels in series(samples, "stemtrace_tasks_total")}
    assert names == {"busy.a", "busy.b", OTHER}
    assert value(samples, "stemtrace_tasks_total", name=OTHER, outcome="succeeded") == 4
    assert value(samples, "stemtrace_tasks_stored", name=OTHER, state="SUCCESS") == 4
    assert value(samples, "stemtrace_task_runtime_seconds_count", name=OTHER) == 4
    for metric in ("stemtrace_tasks_total", "stemtrace_task_runtime_seconds_bucket"):
        names = {dict(labels)["name"] for labels in series(samples, metric)}
        assert names == {"busy.a", "busy.b", OTHER}, metric
    total = sum(
        v for labels, v in series(samples, "stemtrace_tasks_total").items()
        if dict(labels)["outcome"] == "sent"
    )  # fmt: skip
    assert total == sql(db_path, "SELECT COUNT(*) FROM tasks")[0][0] == sum(sizes.values())
    folded = dict(series(samples, "stemtrace_task_runtime_seconds_bucket"))
    assert folded[(("le", "+Inf"), ("name", OTHER))] == 4


def test_a_limit_of_zero_keeps_only_other(site: Site) -> None:
    now = time.time()
    client = site(
        lifecycle("a", "x.a", now - 10) + lifecycle("b", "x.b", now - 9, "FAILURE"),
        metrics_names=0,
    )
    samples = scrape(client)
    assert {dict(k)["name"] for k in series(samples, "stemtrace_tasks_total")} == {OTHER}
    assert value(samples, "stemtrace_tasks_total", name=OTHER, outcome="failed") == 1
    assert value(samples, "stemtrace_tasks_total", name=OTHER, outcome="sent") == 2


def test_a_task_really_named_other_shares_the_folded_series(site: Site) -> None:
    now = time.time()
    events = [*lifecycle("o1", OTHER, now - 10), *lifecycle("o2", OTHER, now - 9)]
    events += [*lifecycle("z", "zz.rare", now - 8), *lifecycle("b", "bb.busy", now - 7)]
    events += lifecycle("b2", "bb.busy", now - 6)
    samples = scrape(site(events, metrics_names=2))  # keeps "other" and bb.busy
    assert value(samples, "stemtrace_tasks_total", name=OTHER, outcome="sent") == 3
    assert value(samples, "stemtrace_tasks_total", name="bb.busy", outcome="sent") == 2


HOSTILE = ('say "hi"', "back\\slash\\", "<script>alert(1)</script>", 'end\\"', "naïve ✓")


def test_hostile_task_names_round_trip_through_the_parser(site: Site) -> None:
    now = time.time()
    events: list[Event] = []
    for i, name in enumerate(HOSTILE):
        events += lifecycle(f"h{i}", name, now - 100 + i, "FAILURE" if i % 2 else "SUCCESS")
    client = site(events)
    response = client.get("/metrics")
    assert "<script>" in response.text  # as text in a text/plain body, served with nosniff
    assert response.headers["x-content-type-options"] == "nosniff"
    samples = parse(response.text)
    names = {dict(labels)["name"] for labels in series(samples, "stemtrace_tasks_total")}
    assert names == set(HOSTILE)
    for i, name in enumerate(HOSTILE):
        outcome = "failed" if i % 2 else "succeeded"
        assert value(samples, "stemtrace_tasks_total", name=name, outcome=outcome) == 1


class FakeStore:
    """What the collector reads of a store, holding what an old store may: any text at all."""

    def __init__(self, names: list[str], reason: str, worker: str) -> None:
        self.names = names
        self.reason = reason
        self.worker = worker

    def since_ever(self, dim: str) -> dict[str, dict[str, Any]]:
        assert dim == "name"
        run = [0] * buckets.COUNT
        run[10] = 1
        return {
            n: {**dict.fromkeys(OUTCOMES, 1), "wait": [0] * buckets.COUNT, "run": run}
            for n in self.names
        }

    def tasks_by_state(self) -> dict[str, dict[str, int]]:
        return {n: {"STARTED": 2} for n in self.names}

    def skipped(self, samples: int = 20) -> dict[str, Any]:
        return {"total": 3, "by_reason": [{"reason": self.reason, "count": 3}], "samples": []}

    def workers(self, now: float | None = None, *, running: bool = True) -> list[dict[str, Any]]:
        return [{"hostname": self.worker, "state": "online", "dropped": 2}]


def test_newlines_and_lone_surrogates_in_labels_stay_inside_their_label() -> None:
    names = ["line\nbreak", 'quote"\nand\\n', "bad\udc80surrogate", "x\r\ty"]
    store = FakeStore(names, 'reason with "quotes"\nand a newline', "celery@host\nevil")
    collector = StoreCollector(RouteSite(store=store, broadcaster=Broadcaster()), 100)  # type: ignore[arg-type]
    registry = CollectorRegistry(auto_describe=True)  # also refuses any family name twice
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples = parse(text)
    for line in text.rstrip("\n").split("\n"):  # a sample or a comment a line: none broke out
        assert line.startswith(("# HELP ", "# TYPE ", "stemtrace_")), line
    found = {dict(labels)["name"] for labels in series(samples, "stemtrace_tasks_active")}
    assert found == {"line\nbreak", 'quote"\nand\\n', "bad?surrogate", "x\r\ty"}
    assert series(samples, "stemtrace_events_skipped_total") == {
        (("reason", 'reason with "quotes"\nand a newline'),): 3.0
    }
    assert series(samples, "stemtrace_worker_events_dropped_total") == {
        (("worker", "celery@host\nevil"),): 2.0
    }


def test_skipped_input_and_workers_equal_health_and_the_workers_api(
    site: Site, db_target: str
) -> None:
    now = time.time()
    events = [
        *lifecycle("t1", "shop.ping", now - 30),
        worker_event("worker_online", W1, now - 20, freq=2.0, tasks=[]),
        worker_event("worker_heartbeat", W1, now - 1, freq=2.0, dropped=7, active=0),
        worker_event("worker_online", W2, now - 20, freq=2.0, tasks=[]),
        worker_event("worker_offline", W2, now - 10, dropped=3),
    ]
    store = open_store(db_target)
    try:
        skips = [Skip("unknown kind 'x' at 3", "0-1", b"{}")] * 2
        store.open_writer().ingest([], ("test", "0-1"), [*skips, Skip("not JSON", "0-2", b"{")])
    finally:
        store.close()
    client = site(events)
    samples = scrape(client)
    health = client.get("/api/health").json()["skipped"]["by_reason"]
    assert series(samples, "stemtrace_events_skipped_total") == {
        (("reason", entry["reason"]),): float(entry["count"]) for entry in health
    }
    assert sorted(e["count"] for e in health) == [1, 2]
    workers = client.get("/api/workers").json()["workers"]
    online = [w for w in workers if w["state"] == "online"]
    assert [w["hostname"] for w in online] == [W1]
    assert value(samples, "stemtrace_workers_online") == len(online) == 1
    assert series(samples, "stemtrace_worker_events_dropped_total") == {(("worker", W1),): 7.0}


@contextmanager
def consumer_client(db_target: str, status: dict[str, Any] | None) -> Iterator[TestClient]:
    """``/metrics`` alone, on an empty store, with ``status`` as the consumer's word."""
    store = open_store(db_target)
    app = FastAPI()
    app.include_router(create_metrics_router(site_of(store, lambda: status)))
    try:
        with TestClient(app) as client:
            yield client
    finally:
        store.close()


def test_the_consumers_counters_come_from_their_status(db_target: str) -> None:
    status = {
        "connected": True,
        "ingested": 1234,
        "lag_seconds": 2.5,
        "celery_events": {"connected": False, "ingested": 5, "lag_seconds": None},
    }
    with consumer_client(db_target, status) as client:
        samples = scrape(client)
    assert series(samples, "stemtrace_events_ingested_total") == {
        (("consumer", "stream"),): 1234.0,
        (("consumer", "celery_events"),): 5.0,
    }
    assert series(samples, "stemtrace_consumer_connected") == {
        (("consumer", "stream"),): 1.0,
        (("consumer", "celery_events"),): 0.0,
    }
    # a lag the transport cannot tell is left out, not written as 0
    assert series(samples, "stemtrace_consumer_lag_seconds") == {(("consumer", "stream"),): 2.5}


def test_without_a_consumer_here_its_metrics_are_absent(db_target: str) -> None:
    with consumer_client(db_target, None) as client:
        text = client.get("/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert not names & {"stemtrace_events_ingested", "stemtrace_consumer_connected",
                        "stemtrace_consumer_lag_seconds"}  # fmt: skip
    assert {"stemtrace_tasks", "stemtrace_workers_online", "stemtrace_events_skipped"} <= names


def test_the_health_api_and_metrics_agree_on_the_consumer(site: Site) -> None:
    client = site([])  # the standalone app, with no consumer (consumer=False)
    assert client.get("/api/health").json()["consumer"] is None
    assert not series(scrape(client), "stemtrace_events_ingested_total")


def test_metrics_sit_under_the_prefix_behind_the_hosts_dependencies(site: Site) -> None:
    now = time.time()
    client = site(lifecycle("a", "x.a", now - 10), prefix="/ops",
                  dependencies=[Depends(require_key)])  # fmt: skip
    denied = client.get("/ops/metrics")
    assert denied.status_code == 401
    assert "stemtrace_tasks" not in denied.text
    assert client.get("/metrics").status_code == 404
    samples = scrape(client, "/ops/metrics", **{"X-Ops-Key": KEY})
    assert value(samples, "stemtrace_tasks_total", name="x.a", outcome="succeeded") == 1
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert "/ops/api/tasks" in paths and not [p for p in paths if p.endswith("/metrics")]


def test_the_standalone_servers_auth_covers_metrics(site: Site) -> None:
    client = site([], auth_token="tok-metrics")
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer tok-metrics"})
    assert ok.status_code == 200
    assert ok.headers["content-security-policy"]  # stemtrace's headers, as on every route


def test_each_scrape_reads_the_store_anew(site: Site, db_target: str) -> None:
    now = time.time()
    client = site(lifecycle("a", "x.a", now - 10))
    before = value(scrape(client), "stemtrace_tasks_total", name="x.a", outcome="succeeded")
    fill(db_target, lifecycle("b", "x.a", now - 5))  # another process's consumer, say
    after = value(scrape(client), "stemtrace_tasks_total", name="x.a", outcome="succeeded")
    assert (before, after) == (1, 2)
