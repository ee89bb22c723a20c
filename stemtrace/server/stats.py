"""The numbers behind the overview: the rollups per step, and the task names that stand out.

``GET /api/stats`` and the overview page read them here, so a chart and the
API never disagree: a point's failure rate and percentiles are computed once,
in :func:`point`. The store keeps outcomes per minute (older minutes folded
into hours); a step is therefore a whole number of minutes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from stemtrace.core import buckets
from stemtrace.server.errors import BadParameter
from stemtrace.server.settled import Settled
from stemtrace.server.views import parse_time
from stemtrace.store import Backend

OUTCOMES: Final = ("sent", "started", "succeeded", "failed", "retried", "revoked")
DIMENSIONS: Final = ("name", "queue", "worker")
QUANTILES: Final = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
STEPS: Final = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
"""Round steps a default is chosen from, in seconds."""
MINUTE: Final = 60
MAX_POINTS: Final = 2000
"""Points one request may ask for; a longer series is refused (ask for a longer step)."""
API_POINTS: Final = 360
"""Points the API's default step gives at most."""
DEFAULT_SINCE: Final = "1h"


@dataclass(frozen=True, slots=True)
class Query:
    """One series: ``[since, until)`` by ``step`` seconds, for one key of ``dim`` (or all)."""

    since: float
    until: float
    step: int
    dim: str = "all"
    key: str = ""

    @property
    def filter(self) -> dict[str, str]:
        """The filter as query parameters (``{"name": "proj.add"}``; none for all tasks)."""
        return {} if self.dim == "all" else {self.dim: self.key}


def pick_step(span: float, most: int) -> int:
    """The shortest round step giving at most ``most`` points over ``span`` seconds."""
    return next((s for s in STEPS if span / s <= most), STEPS[-1])


def parse_query(
    *,
    since: str | None,
    until: str | None,
    step: int | None,
    filters: Mapping[str, str | None],
    now: float,
    most: int = API_POINTS,
) -> Query:
    """A :class:`Query` from request parameters; :class:`BadParameter` says what is wrong.

    ``filters`` maps ``name``, ``queue`` and ``worker`` to their values; at
    most one may be given. Without ``step``, the shortest round step giving
    at most ``most`` points.
    """
    start = parse_time("since", since or DEFAULT_SINCE, now)
    end = parse_time("until", until, now) if until else now
    assert start is not None and end is not None
    if end <= start:
        raise BadParameter(f"until must be after since (since {start:.0f}, until {end:.0f})")
    given = {dim: value for dim, value in filters.items() if value}
    if len(given) > 1:
        raise BadParameter(
            f"filter by at most one of name, queue or worker; got {', '.join(sorted(given))}"
        )
    if step is None:
        step = pick_step(end - start, most)
    elif step < MINUTE or step % MINUTE:
        raise BadParameter(
            f"step must be a whole number of minutes in seconds (60, 300, ...), not {step}"
        )
    points = _points(start, end, step)
    if points > MAX_POINTS:
        raise BadParameter(
            f"{points} points of {step} s from since to until, more than {MAX_POINTS}:"
            " ask for a longer step or a shorter range"
        )
    dim, key = next(iter(given.items()), ("all", ""))
    return Query(start, end, step, dim, key)


def _points(since: float, until: float, step: int) -> int:
    first = int(since // step) * step
    return len(range(first, int(until), step)) or 1


def percentiles(counts: Sequence[int], prefix: str) -> dict[str, float | None]:
    """``{prefix_p50, prefix_p95, prefix_p99}`` in seconds from bucket counts (``None``: none)."""
    return {f"{prefix}_{name}": buckets.percentile(counts, q) for name, q in QUANTILES}


def failure_rate(totals: Mapping[str, Any]) -> float | None:
    """Failed over finished (succeeded or failed); ``None`` when none finished."""
    finished = totals["succeeded"] + totals["failed"]
    return totals["failed"] / finished if finished else None


def point(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One step of the store's rollups as the API and the charts show it."""
    return {
        "t": raw["t"],
        **{name: raw[name] for name in OUTCOMES},
        "failure_rate": failure_rate(raw),
        **percentiles(raw["wait"], "wait"),
        **percentiles(raw["run"], "run"),
    }


def series(store: Backend, query: Query, now: float | None = None) -> list[dict[str, Any]]:
    """The points of ``query``, oldest first, one per step (empty steps count zeros).

    Steps that ended over an hour before ``now`` come from :data:`SETTLED` when it
    holds them (see :mod:`stemtrace.server.settled`).
    """

    def read(since: float, until: float) -> list[dict[str, Any]]:
        raw = store.stats(since, until, query.step, query.dim, query.key)
        return [point(r) for r in raw]

    now = time.time() if now is None else now
    key = (query.dim, query.key, query.step)
    return SETTLED.points(store, key, query.since, query.until, now, read)


SETTLED = Settled()
"""This process's settled points of every store's series."""


@dataclass(frozen=True, slots=True)
class Leaders:
    """The task names that stand out over a range."""

    failing: list[dict[str, Any]]
    """Most failures first: ``name``, ``failed``, ``finished``, ``rate``, and ``top_error``
    (its commonest error group in the range: ``exc_type``, ``message``, ``count``), or ``None``."""
    slowest: list[dict[str, Any]]
    """Run p95 over the range against its p95 since the store began, highest ratio first."""
    busiest: list[dict[str, Any]]
    """Most finished first: ``name``, ``finished``, ``failed``, ``rate``."""


def leaders(store: Backend, since: float, until: float, limit: int = 5) -> Leaders:
    """The task names failing most, slowest against their own usual, and busiest."""

    def read(start: float, end: float) -> dict[str, dict[str, Any]]:
        return store.stats_by("name", start, end, metrics=("run",))

    by_name = SETTLED.totals(store, ("name", "run"), since, until, time.time(), read)
    found = leaders_of(by_name, store.since_ever("name", metrics=("run",)), limit)
    top: dict[str, dict[str, Any]] = {}
    for group in store.error_groups(None, since, until, limit=500):  # most failures first
        top.setdefault(group["name"], group)
    for row in found.failing:
        commonest = top.get(row["name"])
        row["top_error"] = (
            {k: commonest[k] for k in ("exc_type", "message", "count")} if commonest else None
        )
    return found


def leaders_of(
    by_name: Mapping[str, Mapping[str, Any]],
    usual: Mapping[str, Mapping[str, Any]],
    limit: int = 5,
) -> Leaders:
    """:func:`leaders` from the totals per name over the range and since ever."""
    rows = []
    for name, totals in by_name.items():
        finished = totals["succeeded"] + totals["failed"]
        rows.append({"name": name, "failed": totals["failed"], "finished": finished,
                     "rate": failure_rate(totals)})  # fmt: skip
    failing = sorted((r for r in rows if r["failed"]), key=lambda r: (-r["failed"], r["name"]))
    busiest = sorted((r for r in rows if r["finished"]), key=lambda r: (-r["finished"], r["name"]))
    slowest = []
    for name, totals in by_name.items():
        now_p95 = buckets.percentile(totals["run"], 0.95)
        ever = usual.get(name)
        usual_p95 = buckets.percentile(ever["run"], 0.95) if ever else None
        if now_p95 is not None and usual_p95:
            slowest.append({"name": name, "p95": now_p95, "usual_p95": usual_p95,
                            "ratio": now_p95 / usual_p95, "runs": sum(totals["run"])})  # fmt: skip
    slowest.sort(key=lambda r: (-r["ratio"], r["name"]))
    return Leaders(failing[:limit], slowest[:limit], busiest[:limit])
