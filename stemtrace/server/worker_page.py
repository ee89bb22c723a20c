"""One worker: ``/workers/{hostname}`` and ``GET /api/workers/{hostname}``.

Both are built by :func:`build`, so the page shows exactly what the API
answers: its state and heartbeats (gaps in them drawn as a strip over the
last hours), pool, queues and versions, what it runs now and for how long,
what it holds (received, not started) and has scheduled (due later), what it
processed and failed per step (the rollups, ``dim='worker'``) and its recent
failures. A hostname may hold any character: the path parameter takes the
rest of the path, and links quote it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.routing import NoMatchFound

from stemtrace.server import charts, overview, stats
from stemtrace.server.charts import Series
from stemtrace.server.errors import BadParameter
from stemtrace.server.links import url_maker
from stemtrace.server.overview import Url
from stemtrace.server.pages import Pages
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.server.views import not_found
from stemtrace.store import Backend

Hostname = Annotated[str, Path(min_length=1, max_length=255, description="a worker's hostname")]
Span = Annotated[str, Query(alias="range", max_length=16)]
DEFAULT_RANGE: Final = "1h"
STRIP: Final = 6 * 3600
"""Seconds the heartbeat strip covers at least (more when the range is longer)."""
STRIP_WIDTH: Final = 1000
CLICK: Final = "click: this worker's executions first seen in this interval"
LIVE: Final = "worker-live"
"""The element the page refreshes itself into every few seconds (its ``live`` block)."""


def create_worker_router(site: Site) -> APIRouter:
    """The worker's page and its JSON twin, reading ``site``."""
    router = APIRouter(route_class=SecureRoute)
    pages = Pages(site)
    store = site.store
    timeout = site.thresholds.worker_timeout

    @router.get(
        "/api/workers/{hostname:path}",
        name="stemtrace.api.worker",
        tags=["api"],
        summary="One worker: state, heartbeat gaps, running, held and scheduled tasks, failures",
    )
    def worker_api(
        request: Request, hostname: Hostname, span: Span = DEFAULT_RANGE
    ) -> dict[str, Any]:
        """What the worker's page shows, as data. Times are epoch seconds.

        ``worker``: its row (``state`` online, offline or lost; ``last_seen``,
        ``last_heartbeat``, ``heartbeat_freq``, ``pool``, ``concurrency``,
        ``queues``, ``sw_ver``, ``active``, ``processed``, ``loadavg``);
        ``gaps``: ``start``, ``end``, ``seconds`` of each silence (or absence)
        in ``window``, the last one open (``end`` null) while it lasts;
        ``running`` (``elapsed``), ``held`` (``waiting``), ``scheduled`` (``due``,
        ``due_in``: negative when overdue); ``points``: ``t``, ``succeeded``,
        ``failed`` per ``step`` seconds over ``range``; ``failures``: newest first,
        at most 20, since the window began.
        """
        found = build(store, hostname, span, _now(), url_maker(request), timeout)
        if found is None:
            raise not_found("worker", hostname)
        del found["chart"], found["strip"], found["queue_links"]
        return found

    @router.get("/workers/{hostname:path}", name="stemtrace.worker", include_in_schema=False)
    def worker_page(request: Request, hostname: Hostname, span: Span = DEFAULT_RANGE) -> Response:
        context: dict[str, Any] = {"form": {"range": span}, "ranges": overview.RANGES}
        try:
            found = build(store, hostname, span, _now(), url_maker(request), timeout)
        except BadParameter as exc:
            found = build(store, hostname, DEFAULT_RANGE, _now(), url_maker(request), timeout)
            context["error"] = str(exc)
        if found is None:
            again = ("stemtrace.worker", {"hostname": hostname})
            return pages.not_found(request, "worker", hostname, again)
        if reload := pages.found(request):
            return reload
        context.update(found)
        status = 422 if "error" in context else 200
        live = request.headers.get("HX-Request") and request.headers.get("HX-Target") == LIVE
        return pages.page(request, "worker.html", context, status, blocks=("live",) if live else ())

    return router


def _now() -> float:
    return datetime.now(UTC).timestamp()


def build(
    store: Backend, hostname: str, span: str, now: float, url: Url, timeout: float = 60.0
) -> dict[str, Any] | None:
    """The worker's page as data (``None``: no such worker); raises :class:`BadParameter`
    for a range that is not one of :data:`stemtrace.server.overview.RANGES`."""
    chosen = next((r for r in overview.RANGES if r.key == span), None)
    if chosen is None:
        keys = ", ".join(r.key for r in overview.RANGES)
        raise BadParameter(f"range must be one of {keys}, not {span!r}")
    since = now - max(chosen.seconds, STRIP)
    row = store.worker(hostname, since, now, timeout)
    if row is None:
        return None
    lists = {key: row.pop(key) for key in ("running", "held", "scheduled", "failures")}
    for task in lists["running"]:
        task["elapsed"] = _since(task["started_at"], now)
    for task in lists["held"]:
        task["waiting"] = _since(task["received_at"], now)
    for task in lists["scheduled"]:
        task["due_in"] = None if task["due"] is None else task["due"] - now
    gaps = [{**g, "seconds": g["end"] - g["start"]} for g in row.pop("gaps")]
    if row["state"] != "online":  # silent since its last word, and still
        last = row["last_seen"]
        gaps.append({"start": last, "end": None, "seconds": now - last})
    query = stats.parse_query(
        since=chosen.key, until=None, step=None, filters={"worker": hostname}, now=now,
        most=overview.POINTS,
    )  # fmt: skip
    points = [
        {"t": p["t"], "succeeded": p["succeeded"], "failed": p["failed"]}
        for p in stats.series(store, query)
    ]
    return {
        "worker": row,
        "window": {"since": since, "until": now},
        "range": chosen.key,
        "step": query.step,
        "points": points,
        "gaps": gaps,
        **lists,
        "chart": _chart(points, query, url),
        "strip": strip(gaps, since, now),
        "queue_links": _queue_links(row["queues"], url),
    }


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else max(now - start, 0.0)


def strip(gaps: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    """Where each gap falls on a strip :data:`STRIP_WIDTH` wide from ``since`` to ``until``
    (at least one unit wide, so that a short gap still shows)."""
    span = until - since
    found = []
    for gap in gaps:
        start = max(gap["start"], since)
        end = until if gap["end"] is None else min(gap["end"], until)
        if end <= start:
            continue
        x = (start - since) / span * STRIP_WIDTH
        width = max((end - start) / span * STRIP_WIDTH, 1.0)
        found.append({**gap, "x": round(x, 1), "width": round(width, 1)})
    return found


def _chart(points: list[dict[str, Any]], query: stats.Query, url: Url) -> Any:
    step = query.step
    per = "per minute" if step == 60 else f"per {step // 60} min"
    series = [
        Series("succeeded", "chart-ok", [(p["t"], p["succeeded"]) for p in points]),
        Series("failed", "chart-bad", [(p["t"], p["failed"]) for p in points]),
    ]
    state = {"succeeded": "SUCCESS", "failed": "FAILURE"}

    def link(t: float, one: Series) -> str | None:
        window = {"worker": query.key, "state": state[one.label], "since": int(t),
                  "until": int(t) + step}  # fmt: skip
        return url("stemtrace.executions", query=window)

    start, end = points[0]["t"], points[-1]["t"] + step
    return {
        "title": f"Processed, {per}",
        "svg": charts.bar_chart(series, start=start, end=end, step=step, unit="tasks",
                                title=f"Processed by this worker, {per}", link=link,
                                click=CLICK),
    }  # fmt: skip


def _queue_links(queues: list[str], url: Url) -> dict[str, str | None]:
    """Each queue's link to the queues page (none while that page is not served)."""
    try:
        target = url("stemtrace.queues")
    except NoMatchFound:
        return dict.fromkeys(queues)
    return {queue: target for queue in queues}
