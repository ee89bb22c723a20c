"""``GET /metrics``: the store's numbers in Prometheus's text format, read anew per scrape.

Nothing is counted in this process: a :class:`StoreCollector` reads the store's
counters since it began (:meth:`Backend.since_ever`, which retention leaves),
its tasks by state now, the skipped input it kept and the workers it knows,
and turns them into metric families on every scrape. So every server on one
database answers the same numbers, a restart resets nothing but the
consumer's own counters, and a separate ``stemtrace consume`` needs no port.

Labels hold only bounded values: task names (the ``names`` busiest, the rest
folded into ``name="other"``), fixed outcomes and states, skip reasons
without their values, online workers. Never a task id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from stemtrace.core import buckets, states
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site

OTHER = "other"
"""The ``name`` label of every task name past the busiest ``names``."""

OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")
"""The ``outcome`` label: the counters the store keeps per task name, in its order."""

CONSUMERS = (("stream", None), ("celery_events", "celery_events"))
"""The ``consumer`` label, and where its status sits in ``Site.consumer_status()``."""

_SUM_NOTE = (
    " The buckets and _count are exact; _sum is estimated, each duration at its bucket's"
    " midpoint (within 21 %, or 0.5 ms under 1 ms; one past 6.6 h counts as 6.6 h)."
)


def create_metrics_router(site: Site, names: int = 100) -> APIRouter:
    """``/metrics`` beside the pages: the same prefix, the same ``dependencies``, no schema."""
    router = APIRouter(route_class=SecureRoute, include_in_schema=False)

    @router.get("/metrics", name="stemtrace.metrics")
    def metrics() -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(site, names))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


class StoreCollector:
    """The metric families of one scrape, read from ``site`` (a prometheus_client Collector)."""

    def __init__(self, site: Site, names: int) -> None:
        self.site = site
        self.names = names

    def collect(self) -> Iterator[Metric]:
        store = self.site.store
        ever = store.since_ever("name")
        stored = store.tasks_by_state()
        fold = Folding(ever, stored, self.names)
        yield from task_counters(ever, fold)
        yield from task_histograms(ever, fold)
        yield from task_gauges(stored, fold)
        yield from event_metrics(store.skipped(samples=0), self.site.consumer_status())
        yield from worker_metrics(store.workers(running=False))


class Folding:
    """Which task names keep their own series: the ``limit`` busiest by tasks since ever.

    A name's business is the larger of its tasks sent and started (a task
    whose ``sent`` was never captured still counts); ties go to the name with
    more tasks stored, then to the first in order, so that a scrape is stable.
    """

    def __init__(
        self,
        ever: Mapping[str, Mapping[str, Any]],
        stored: Mapping[str, Mapping[str, int]],
        limit: int,
    ) -> None:
        def rank(name: str) -> tuple[int, int, str]:
            row = ever.get(name, {})
            busy = max(int(row.get("sent") or 0), int(row.get("started") or 0))
            return (-busy, -sum(stored.get(name, {}).values()), name)

        ranked = sorted(set(ever) | set(stored), key=rank)
        self.kept = frozenset(ranked[:limit])
        self.folded = len(ranked) > limit

    def label(self, name: str) -> str:
        return _text(name) if name in self.kept else OTHER

    def labels(self) -> list[str]:
        """Every ``name`` label of the scrape, ``other`` last when anything folded into it."""
        found = sorted({_text(n) for n in self.kept} - {OTHER})
        return [*found, *([OTHER] if self.folded or OTHER in self.kept else [])]


def task_counters(ever: Mapping[str, Mapping[str, Any]], fold: Folding) -> Iterator[Metric]:
    totals = {(label, outcome): 0 for label in fold.labels() for outcome in OUTCOMES}
    for name, row in ever.items():
        label = fold.label(name)
        for outcome in OUTCOMES:
            totals[label, outcome] += int(row.get(outcome) or 0)
    family = CounterMetricFamily(
        "stemtrace_tasks",
        "Tasks by name and outcome since the store began: sent, started, succeeded, failed,"
        " revoked (revoked or rejected) count each task once; retried counts each retry."
        " Retention does not lower them.",
        labels=("name", "outcome"),
    )
    for (label, outcome), n in totals.items():
        family.add_metric((label, outcome), n)
    yield family


def task_histograms(ever: Mapping[str, Mapping[str, Any]], fold: Folding) -> Iterator[Metric]:
    for metric, key, what in (
        ("stemtrace_task_queue_wait", "wait", "Seconds from a task's sent to its started"),
        ("stemtrace_task_runtime", "run", "Seconds a finished task ran (the worker's runtime)"),
    ):
        merged: dict[str, list[int]] = {label: [0] * buckets.COUNT for label in fold.labels()}
        for name, row in ever.items():
            label = fold.label(name)
            merged[label] = buckets.merge(merged[label], row.get(key) or ())
        family = HistogramMetricFamily(
            metric,
            f"{what}, by task name, since the store began.{_SUM_NOTE}",
            labels=("name",),
            unit="seconds",
        )
        for label, counts in merged.items():
            family.add_metric(
                (label,),
                [(_le(bound), n) for bound, n in buckets.cumulative(counts, every=2)],
                estimated_sum(counts),
            )
        yield family


def estimated_sum(counts: Sequence[int]) -> float:
    """The sum of what ``counts`` counted, each at its bucket's midpoint.

    A duration in ``(a, a·√2]`` counted as ``a·(1 + √2)/2`` is at most 21 % too
    high (at the bucket's bottom) or 15 % too low (at its top); one in the first
    bucket is off by at most 0.5 ms; one past the last finite bound counts as
    that bound, all that is known of it. The rollups keep counts, not sums,
    and an estimate keeps ``rate(_sum) / rate(_count)`` (a mean) usable.
    """
    total = 0.0
    for bucket, n in enumerate(counts):
        if n > 0:
            high = buckets.BOUNDS[bucket]
            low = buckets.lower(bucket)
            total += n * (low if math.isinf(high) else (low + high) / 2)
    return total


def task_gauges(stored: Mapping[str, Mapping[str, int]], fold: Folding) -> Iterator[Metric]:
    by_state: dict[tuple[str, str], int] = {}
    active = dict.fromkeys(fold.labels(), 0)
    for name, counts in stored.items():
        label = fold.label(name)
        for state, n in counts.items():
            key = (label, _text(state))
            by_state[key] = by_state.get(key, 0) + n
            if state not in states.TERMINAL:
                active[label] += n
    family = GaugeMetricFamily(
        "stemtrace_tasks_stored",
        "Tasks stored now by name and state (what retention has not forgotten).",
        labels=("name", "state"),
    )
    for (label, state), n in sorted(by_state.items()):
        family.add_metric((label, state), n)
    yield family
    family = GaugeMetricFamily(
        "stemtrace_tasks_active",
        "Tasks stored now in a state that is not final (pending, received, started,"
        " waiting for a retry), by name.",
        labels=("name",),
    )
    for label, n in active.items():
        family.add_metric((label,), n)
    yield family


def event_metrics(skipped: Mapping[str, Any], status: Mapping[str, Any] | None) -> Iterator[Metric]:
    family = CounterMetricFamily(
        "stemtrace_events_skipped",
        "Input the consumers left out since the store began, by reason (its values left out).",
        labels=("reason",),
    )
    for entry in skipped.get("by_reason", ()):
        family.add_metric((_text(str(entry["reason"])),), int(entry["count"]))
    yield family
    consumers = [(label, s) for label, s in _consumers(status) if s is not None]
    if not consumers:  # no consumer in this process: a separate one feeds the store
        return
    ingested = CounterMetricFamily(
        "stemtrace_events_ingested",
        "Events this process's consumer wrote to the store since it started"
        " (stream: stemtrace's own; celery_events: Celery's -E events).",
        labels=("consumer",),
    )
    connected = GaugeMetricFamily(
        "stemtrace_consumer_connected",
        "1 when the consumer reads its broker, 0 when it cannot (or stands by for another writer).",
        labels=("consumer",),
    )
    lag = GaugeMetricFamily(
        "stemtrace_consumer_lag_seconds",
        "Seconds between the newest entry on the stream and the last one the consumer"
        " wrote (absent while the transport cannot tell).",
        labels=("consumer",),
    )
    for label, found in consumers:
        ingested.add_metric((label,), int(found.get("ingested") or 0))
        connected.add_metric((label,), 1 if found.get("connected") else 0)
        seconds = found.get("lag_seconds")
        if isinstance(seconds, int | float) and math.isfinite(seconds):
            lag.add_metric((label,), seconds)
    yield from (ingested, connected, lag)


def _consumers(
    status: Mapping[str, Any] | None,
) -> Iterable[tuple[str, Mapping[str, Any] | None]]:
    if status is None:
        return
    for label, key in CONSUMERS:
        found = status if key is None else status.get(key)
        yield label, found if isinstance(found, Mapping) else None


def worker_metrics(workers: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    online = [w for w in workers if w.get("state") == "online"]
    family = GaugeMetricFamily(
        "stemtrace_workers_online",
        "Workers heard from within three heartbeats that have not said they stopped.",
    )
    family.add_metric((), len(online))
    yield family
    dropped = CounterMetricFamily(
        "stemtrace_worker_events_dropped",
        "Events a worker's capture dropped (buffer full while the broker was slow or down),"
        " as its last heartbeat said; online workers only.",
        labels=("worker",),
    )
    for worker in online:
        if isinstance(worker.get("dropped"), int):
            dropped.add_metric((_text(str(worker["hostname"])),), worker["dropped"])
    yield dropped


def _le(bound: float) -> str:
    """A bucket's ``le`` as Prometheus writes it: ``+Inf`` or the shortest exact decimal."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _text(value: str) -> str:
    """A label value that encodes as UTF-8 (a lone surrogate in an old row becomes ``?``)."""
    return value.encode("utf-8", "replace").decode("utf-8")
