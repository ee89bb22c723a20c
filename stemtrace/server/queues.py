"""``/queues`` and ``GET /api/queues``: what waits where, who consumes it, and what is due.

Both read :func:`build`, so the page and the API never disagree. Per queue:
the broker's own count as the consumer last polled it
(:mod:`stemtrace.ingest.depths`), the online workers subscribed to it,
stemtrace's own count of tasks sent to it and not received (and the oldest),
tasks in and out per minute over the last 15 minutes (the rollups), and the
backlog as polled, per minute. A queue with waiting messages and nobody to
consume them is a problem, said in words. Below: the tasks scheduled for
later (an ETA or countdown, or a retry waiting for its next attempt).

Everything here is read from small tables and the in-flight index, never
from a scan of every task. Queue, task and worker names are hostile text:
the template autoescapes them and the charts escape their labels.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from stemtrace.server import charts, stats
from stemtrace.server.charts import Series
from stemtrace.server.pages import Pages
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.store import Backend

RATE_WINDOW: Final = 900
"""Seconds the in and out rates are averaged over."""
MINUTE: Final = 60
NOBODY: Final = "nobody consumes this queue"
SCHEDULED_LIMIT: Final = 200
"""Scheduled tasks listed by default; ``scheduled_total`` says how many there are."""
CHARTS: Final = 10
"""Backlog charts the page draws at most (queues with a problem or the most waiting first)."""
CHART_POINTS: Final = 60
"""Points a backlog chart has at most (each the largest count of its step)."""
API_POINTS: Final = 360
"""Points of backlog the API gives per queue at most."""
MAX_QUEUES: Final = 500
"""Queues listed at most (queue names come from tasks: a flood of them must not flood the
page); those with messages, waiting tasks or consumers first, ``queues_total`` says all."""

Hours = Annotated[int, Query(ge=1, le=48, description="hours of backlog history")]
Scheduled = Annotated[int, Query(ge=0, le=1000, description="scheduled tasks to list at most")]


def create_queues_router(site: Site) -> APIRouter:
    """``/queues`` and ``/api/queues``, reading ``site.store``."""
    router = APIRouter(route_class=SecureRoute)
    pages = Pages(site)
    store = site.store

    @router.get(
        "/api/queues",
        name="stemtrace.api.queues",
        tags=["api"],
        summary="Queues: broker depth, consumers, waiting tasks, rates, backlog; scheduled tasks",
    )
    def api_queues(hours: Hours = 6, scheduled: Scheduled = SCHEDULED_LIMIT) -> dict[str, Any]:
        """``{"at", "polled_at", "queues": [...], "scheduled": [...], "scheduled_total"}``.

        Each queue: ``queue``; ``broker`` (``messages``, ``consumers`` (RabbitMQ only),
        ``error``, ``at``: the broker's count as last polled, or ``null`` when never);
        ``workers`` (online workers subscribed); ``waiting`` (tasks sent, not received)
        and ``oldest`` (``id``, ``name``, ``sent_at``, ``age``) of them; ``in_per_minute``
        and ``out_per_minute`` (sent and started, over the last 15 minutes);
        ``problem`` (words, or ``null``); ``backlog``: ``[t, largest count]`` pairs over
        the last ``hours``, one per ``backlog_step`` seconds (at most 360; steps never
        read are left out). Each scheduled task: ``id``, ``name``, ``state``,
        ``queue``, ``worker`` (holding it, if received), ``eta``, ``due`` (epoch
        seconds) and ``due_in`` (seconds; negative: overdue), ``retries``.
        Times are epoch seconds.
        """
        return build(store, _now(), hours, scheduled, points=API_POINTS)

    @router.get("/queues", name="stemtrace.queues", include_in_schema=False)
    def queues_page(request: Request, hours: Hours = 6) -> HTMLResponse:
        context = build(store, _now(), hours, SCHEDULED_LIMIT, points=CHART_POINTS, draw=True)
        context["hours"] = hours
        live = (
            request.headers.get("HX-Request") and request.headers.get("HX-Target") == "queues-live"
        )
        return pages.page(request, "queues.html", context, blocks=("listing",) if live else ())

    return router


def _now() -> float:
    return datetime.now(UTC).timestamp()


def build(
    store: Backend,
    now: float,
    hours: int,
    scheduled_limit: int,
    *,
    points: int = API_POINTS,
    draw: bool = False,
) -> dict[str, Any]:
    """The queues and the scheduled tasks as the page and the API show them.

    The backlog comes in steps giving at most ``points`` per queue; ``draw`` adds
    the page's charts (``charts``).
    """
    depths = store.queue_depths()
    waiting = store.waiting_by_queue()
    consumers: dict[str, list[str]] = {}
    for worker in store.workers(now, running=False):
        if worker["state"] == "online":
            for queue in worker["queues"]:
                consumers.setdefault(queue, []).append(worker["hostname"])
    known = sorted({*store.known_queues(), *depths, *waiting} - {""})
    names = _first(known, depths, waiting, consumers)
    rates = store.stats_by("queue", now - RATE_WINDOW, now, metrics=())
    since = now - hours * 3600
    step = stats.pick_step(now - since, points)
    backlogs = store.queue_backlog(names, since, step)
    queues = [
        _queue(name, depths.get(name), waiting.get(name), consumers.get(name, []),
               rates.get(name), backlogs.get(name, []), now)
        for name in names
    ]  # fmt: skip
    queues.sort(key=lambda q: (q["problem"] is None, -_depth(q), q["queue"]))
    total, due = store.scheduled(scheduled_limit)
    polled = [d["at"] for d in depths.values()]
    found = {
        "at": now,
        "polled_at": max(polled) if polled else None,
        "backlog_step": step,
        "queues": queues,
        "queues_total": len(known),
        "scheduled": [_scheduled(row, now) for row in due],
        "scheduled_total": total,
    }
    if draw:
        found["charts"] = _charts(queues, since, now, step)
    return found


def _first(
    known: list[str],
    depths: dict[str, dict[str, Any]],
    waiting: dict[str, Any],
    consumers: dict[str, list[str]],
) -> list[str]:
    """At most :data:`MAX_QUEUES` of ``known``: the busy or consumed ones first."""
    if len(known) <= MAX_QUEUES:
        return known

    def idle(name: str) -> bool:
        return not ((depths.get(name) or {}).get("messages") or name in waiting
                    or name in consumers)  # fmt: skip

    return sorted(sorted(known, key=idle)[:MAX_QUEUES])


def _queue(
    name: str,
    depth: dict[str, Any] | None,
    waiting: dict[str, Any] | None,
    workers: list[str],
    rates: dict[str, Any] | None,
    backlog: list[tuple[int, int]],
    now: float,
) -> dict[str, Any]:
    count = int(waiting["count"]) if waiting else 0
    oldest = None
    if waiting and waiting.get("oldest_id") is not None:
        sent_at = waiting.get("oldest_sent_at")
        oldest = {
            "id": waiting["oldest_id"],
            "name": waiting.get("oldest_name"),
            "sent_at": sent_at,
            "age": _age(sent_at, now),
        }
    messages = depth.get("messages") if depth else None
    broker_consumers = depth.get("consumers") if depth else None
    pending = max(messages or 0, count)
    nobody = pending > 0 and not workers and not broker_consumers
    return {
        "queue": name,
        "broker": depth,
        "workers": workers,
        "waiting": count,
        "oldest": oldest,
        "in_per_minute": _per_minute(rates, "sent"),
        "out_per_minute": _per_minute(rates, "started"),
        "problem": NOBODY if nobody else None,
        "backlog": [[t, n] for t, n in backlog],
    }


def _per_minute(rates: dict[str, Any] | None, outcome: str) -> float:
    return round(int(rates[outcome]) / (RATE_WINDOW / MINUTE), 2) if rates else 0.0


def _depth(queue: dict[str, Any]) -> int:
    broker = queue["broker"] or {}
    return max(int(broker.get("messages") or 0), int(queue["waiting"]))


def _age(since: Any, now: float) -> float | None:
    if isinstance(since, int | float) and math.isfinite(since):
        return max(now - float(since), 0.0)
    return None


def _scheduled(row: dict[str, Any], now: float) -> dict[str, Any]:
    due = row.get("due")
    return {
        "id": row["id"],
        "name": row.get("name"),
        "state": row["state"],
        "queue": row.get("queue"),
        "worker": row.get("worker") if row["state"] != "PENDING" else None,
        "eta": row.get("eta"),
        "due": due,
        "due_in": due - now if isinstance(due, float) and math.isfinite(due) else None,
        "retries": row.get("retries") or 0,
    }


def _charts(
    queues: list[dict[str, Any]], since: float, now: float, step: int
) -> list[dict[str, Any]]:
    """A backlog chart per queue (at most :data:`CHARTS`), the largest count of each step."""
    start = int(since // step) * step
    found = []
    for index, queue in enumerate(queues[:CHARTS]):
        points = [(float(t), float(n)) for t, n in queue["backlog"]]
        series = [Series("messages waiting", "chart-wait", points)]
        svg = charts.line_chart(
            series, start=start, end=now, step=step, unit="messages",
            title=f"Backlog of {queue['queue']}",
        )  # fmt: skip
        found.append({"id": f"backlog-{index}", "queue": queue["queue"], "svg": svg})
    return found
