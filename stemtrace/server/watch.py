"""The problems right now, found at most every few seconds however many ask.

:class:`Watch` reads the tasks in flight, the workers, the broker's queue
depths and the usual numbers of the last day (rollups, re-read once a minute),
and hands them to :func:`stemtrace.model.problems.find`. The problems page,
its API, the navigation's count and the task page all read one
:class:`Found`, so they agree.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from stemtrace.core import buckets
from stemtrace.core.thresholds import Thresholds
from stemtrace.model import problems
from stemtrace.store import Backend, is_unavailable

logger = logging.getLogger("stemtrace")

DAY: Final = 86400.0


@dataclass(frozen=True)
class Found:
    """One look at the store: every problem, counts per kind, and when it was taken."""

    problems: list[dict[str, Any]]
    at: float
    inflight: int = 0
    partial: bool = False
    workers: list[dict[str, Any]] = field(default_factory=list)
    depths: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(p["kind"] for p in self.problems)
        return {kind: counted[kind] for kind in problems.KINDS}

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        return [p for p in self.problems if p["task_id"] == task_id]


TTL = 2.0
"""Seconds a look at the problems is served again before the store is read afresh."""


class Watch:
    """Problems of one store under ``thresholds``; thread-safe, cached ``ttl`` seconds."""

    def __init__(self, store: Backend, thresholds: Thresholds, ttl: float = TTL) -> None:
        self.store = store
        self.thresholds = thresholds
        self.ttl = ttl
        self._lock = threading.Lock()
        self._found: Found | None = None
        self._usuals: tuple[float, problems.Usuals, dict[str, dict[str, Any]]] | None = None

    def current(self, now: float | None = None) -> Found:
        """The problems at most ``ttl`` seconds old (``now`` given: found afresh for it)."""
        with self._lock:
            fresh = now is None and self._found is not None
            if fresh and self._found is not None and time.time() - self._found.at < self.ttl:
                return self._found
            self._found = self._look(time.time() if now is None else now)
            return self._found

    def workers_now(self, now: float) -> list[dict[str, Any]]:
        """The workers as the last look saw them when it is under ``ttl`` old, else afresh
        (a task page needs their states and queues, not a look at every task)."""
        with self._lock:
            found = self._found
            if found is not None and abs(now - found.at) < self.ttl:
                return found.workers
        return self.store.workers(now, self.thresholds.worker_timeout)

    def of_task(
        self, task: dict[str, Any], workers: list[dict[str, Any]], now: float
    ) -> list[dict[str, Any]]:
        """One task's problems now, by the rules :meth:`current` applies to all of them."""
        with self._lock:
            usuals = self._usual_numbers(now)[1]
        return problems.of_task(task, workers, usuals, self.thresholds, now)

    def usual(self, name: str | None) -> dict[str, Any] | None:
        """A task name's queue wait and run time p50 and p95 over the last day."""
        with self._lock:
            _, _, per_name = self._usual_numbers(time.time())
        return per_name.get(name or "")

    def _look(self, now: float) -> Found:
        store = self.store
        limit = self.thresholds.inflight_limit
        tasks = store.inflight(limit)
        workers = store.workers(now, self.thresholds.worker_timeout)
        depths = store.queue_depths()
        usuals, _ = self._usual_numbers(now)[1:]
        found = problems.find(tasks, workers, depths, usuals, self.thresholds, now)
        partial = _partial(tasks, limit)
        return Found(found, now, len(tasks), partial, workers, depths)

    def _usual_numbers(
        self, now: float
    ) -> tuple[float, problems.Usuals, dict[str, dict[str, Any]]]:
        """The rollups' usual numbers, read again once a minute."""
        if self._usuals is not None and now - self._usuals[0] < 60.0:
            return self._usuals
        store, window = self.store, self.thresholds.failure_window
        queues = store.stats_by("queue", now - DAY, now, ("wait",))
        names = store.stats_by("name", now - DAY, now, ("wait", "run"))
        recent = store.stats_by("name", now - window, now, ())
        before = store.stats_by("name", now - DAY, now - window, ())
        usuals = problems.Usuals(
            wait_p95=_percentiles(queues, "wait", 0.95),
            run_p50=_percentiles(names, "run", 0.50),
            run_p95=_percentiles(names, "run", 0.95),
            run_p99=_percentiles(names, "run", 0.99),
            failures={
                name: (
                    row["failed"],
                    row["failed"] + row["succeeded"],
                    before.get(name, {}).get("failed", 0),
                    before.get(name, {}).get("failed", 0)
                    + before.get(name, {}).get("succeeded", 0),
                )
                for name, row in recent.items()
            },
            limits=store.time_limits(),
        )
        per_name = {
            name: {
                f"{metric}_{label}": buckets.percentile(row[metric], q)
                for metric in ("wait", "run")
                for label, q in (("p50", 0.50), ("p95", 0.95))
            }
            | {"waits": sum(row["wait"]), "runs": sum(row["run"])}
            for name, row in names.items()
        }
        self._usuals = (now, usuals, per_name)
        return self._usuals


def _partial(tasks: list[dict[str, Any]], limit: int) -> bool:
    """Whether a state's share of ``limit`` was full: more of it may be in flight."""
    counted = Counter(task["state"] for task in tasks)
    return any(n >= max(limit // 4, 1) for n in counted.values())


def _percentiles(rows: dict[str, Any], metric: str, q: float) -> dict[str, float]:
    """Per key, the ``q`` quantile of ``metric``, for keys with enough values to say."""
    found = {}
    for key, row in rows.items():
        counts = row[metric]
        if sum(counts) >= problems.MIN_USUAL:
            value = buckets.percentile(counts, q)
            if value is not None:
                found[key] = value
    return found


async def count_events(
    watch: Watch, is_disconnected: Callable[[], object], every: float = 3.0
) -> AsyncIterator[dict[str, str]]:
    """SSE ``problems`` messages: the number of problems (the data; nothing else) on the
    first look and whenever it changes, looked at every ``every`` seconds. While the store
    cannot be read the stream stays open and says nothing new, and looks again after."""
    last: str | None = None
    failing = False
    while True:
        gone = is_disconnected()
        if asyncio.iscoroutine(gone):
            gone = await gone
        if gone:
            return
        try:
            found = await asyncio.to_thread(watch.current)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not failing:
                logger.warning("stemtrace: cannot look for problems now: %s", exc)
            failing = True
        else:
            failing = False
            total = str(len(found.problems))
            if total != last:
                last = total
                yield {"event": "problems", "data": total}
        await asyncio.sleep(every)
