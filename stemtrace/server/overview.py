"""The overview page's content: what is going wrong right now, as charts and short lists.

Built from :mod:`stemtrace.server.stats` (the numbers ``GET /api/stats``
serves) and drawn by :mod:`stemtrace.server.charts`. Every bar and point links
to the executions it counts: same task name, queue or worker, same state, and the
step's time window. The executions list filters on when a task was first
seen, the charts count an outcome when it happened; for a task that ran
longer than a step the two windows differ, and every link's hover text says
which one it opens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from markupsafe import Markup

from stemtrace.server import charts, stats
from stemtrace.server.charts import Series
from stemtrace.server.errors import BadParameter
from stemtrace.store import Backend

Url = Callable[..., str]
"""``url(route, query=None, **path)``: a link under the server's mount prefix."""


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    """As the page's ``range`` parameter says it, and as an age :func:`parse_time` reads."""
    label: str
    seconds: int


RANGES: Final = (
    Range("15m", "15 min", 900),
    Range("1h", "1 h", 3600),
    Range("6h", "6 h", 21600),
    Range("24h", "24 h", 86400),
    Range("7d", "7 d", 604800),
)
DEFAULT_RANGE: Final = "1h"
POINTS: Final = 100
"""Bars a chart has at most: wide enough to hover and click."""
LEADERS: Final = 5
"""Task names in each list beside the charts."""
CLICK: Final = "click: the executions first seen in this interval"
STATE_OF: Final = {"succeeded": "SUCCESS", "failed": "FAILURE", "retried": None}
"""The state a throughput bar's click filters on (a retried task has moved on since: none)."""


@dataclass(frozen=True, slots=True)
class Chart:
    id: str
    title: str
    caption: str
    svg: Markup


def build(
    store: Backend, span: str, filters: Mapping[str, str | None], now: float, url: Url
) -> dict[str, Any]:
    """The page's context over the last ``span`` (a :data:`RANGES` key) for ``filters``.

    Raises :class:`stemtrace.server.errors.BadParameter` for an unknown range
    or more than one filter.
    """
    chosen = next((r for r in RANGES if r.key == span), None)
    if chosen is None:
        keys = ", ".join(r.key for r in RANGES)
        raise BadParameter(f"range must be one of {keys}, not {span!r}")
    query = stats.parse_query(
        since=chosen.key, until=None, step=None, filters=filters, now=now, most=POINTS
    )
    points = stats.series(store, query)
    links = _Links(query, url)
    leaders = stats.leaders(store, query.since, query.until, LEADERS)
    return {
        "range": chosen,
        "query": query,
        "step_label": _step_label(query.step),
        "totals": _totals(points),
        "charts": _charts(points, query, links),
        "leaders": leaders,
        "leaders_all": query.dim in ("queue", "worker"),
        "window": {"since": int(query.since), "until": int(query.until) + 1},
    }


class _Links:
    """Links to the executions a bar or point counts: same filter, state and interval."""

    def __init__(self, query: stats.Query, url: Url) -> None:
        self.query = query
        self.url = url

    def window(self, t: float, state: str | None) -> str | None:
        step = self.query.step
        found = {**self.query.filter, "state": state, "since": int(t), "until": int(t) + step}
        return self.url("stemtrace.executions", query=found)


def _charts(points: list[dict[str, Any]], query: stats.Query, links: _Links) -> list[Chart]:
    step = query.step
    start = points[0]["t"]
    end = points[-1]["t"] + step
    frame = {"start": start, "end": end, "step": step}
    click = CLICK
    per = _step_label(step)
    throughput = [
        Series("succeeded", "chart-ok", [(p["t"], p["succeeded"]) for p in points]),
        Series("failed", "chart-bad", [(p["t"], p["failed"]) for p in points]),
        Series("retried", "chart-warn", [(p["t"], p["retried"]) for p in points]),
    ]
    rate = [Series("failure rate", "chart-bad", [(p["t"], _percent(p["failure_rate"]))
                                                 for p in points])]  # fmt: skip
    wait = [Series("queue wait p95", "chart-wait", [(p["t"], p["wait_p95"]) for p in points])]
    run = [Series("run time p95", "chart-run", [(p["t"], p["run_p95"]) for p in points])]

    def of_state(t: float, one: Series) -> str | None:
        return links.window(t, STATE_OF.get(one.label))

    def failed(t: float, one: Series) -> str | None:
        return links.window(t, "FAILURE")

    def any_state(t: float, one: Series) -> str | None:
        return links.window(t, None)

    return [
        Chart("throughput", "Throughput",
              f"Tasks that succeeded, failed or were retried, {per}.",
              charts.bar_chart(throughput, **frame, unit="tasks", title=f"Throughput, {per}",
                               link=of_state, click=click)),
        Chart("failure-rate", "Failure rate",
              "Failed over finished (succeeded or failed), per interval.",
              charts.line_chart(rate, **frame, unit="%", title="Failure rate",
                                link=failed, click=click)),
        Chart("queue-wait", "Queue wait, p95",
              "95 % of the tasks that started in the interval had waited at most this long"
              " since they were sent.",
              charts.line_chart(wait, **frame, unit="s", title="Queue wait p95",
                                link=any_state, click=click)),
        Chart("run-time", "Run time, p95",
              "95 % of the tasks that finished in the interval ran at most this long.",
              charts.line_chart(run, **frame, unit="s", title="Run time p95",
                                link=any_state, click=click)),
    ]  # fmt: skip


def _totals(points: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {name: sum(p[name] for p in points) for name in stats.OUTCOMES}
    totals["finished"] = totals["succeeded"] + totals["failed"]
    totals["failure_rate"] = stats.failure_rate(totals)
    return totals


def _percent(rate: float | None) -> float | None:
    return None if rate is None else rate * 100


def _step_label(step: int) -> str:
    """``per minute``, ``per 5 min``, ``per hour``, ``per 2 h``."""
    if step == 60:
        return "per minute"
    if step == 3600:
        return "per hour"
    if step == 86400:
        return "per day"
    if step % 3600 == 0:
        return f"per {step // 3600} h"
    return f"per {step // 60} min"
