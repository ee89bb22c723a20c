"""The JSON API: a router factory; every path is relative to where it is mounted.

Read-only. Unknown ids answer 404 with a message, bad parameters 422 with the
reason. Handlers are plain ``def`` so FastAPI runs them in its thread pool:
SQLite reads never block the event loop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam

from stemtrace import __version__
from stemtrace.core import states
from stemtrace.model import export, flows
from stemtrace.server import executions, stats
from stemtrace.server.errors import RETRY_AFTER, unavailable_reason
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.server.views import (
    flow_and_path,
    histories,
    load_flow,
    load_trace,
    not_found,
    task_detail,
)
from stemtrace.server.why import why
from stemtrace.store import Backend, BadCursor, is_unavailable, listed

ID = Annotated[str, PathParam(min_length=1, max_length=255, description="a Celery task id")]
Text = Annotated[str | None, Query(min_length=1, max_length=255)]


def create_api_router(site: Site) -> APIRouter:
    """The API routes, reading ``site.store``; ``site.consumer_status`` feeds ``/api/health``."""
    router = APIRouter(prefix="/api", tags=["api"], route_class=SecureRoute)
    _task_routes(router, site)
    timeout = site.thresholds.worker_timeout
    _flow_routes(router, site.store, timeout)
    _export_routes(router, site.store, timeout)
    _trace_routes(router, site.store, timeout)
    _fleet_routes(router, site)
    _stats_routes(router, site.store)
    return router


def _task_routes(router: APIRouter, site: Site) -> None:
    """Executions, one task, a group's members."""
    store = site.store

    @router.get("/tasks", summary="Task executions, newest first or longest first")
    def list_tasks(
        state: Annotated[
            list[str] | None,
            Query(description="states to keep (repeat, or separate with commas)"),
        ] = None,
        name: Text = None,
        worker: Text = None,
        queue: Annotated[str | None, Query(max_length=255, description="only this queue")] = None,
        trace_id: Text = None,
        root_id: Text = None,
        q: Annotated[
            str | None,
            Query(max_length=200, description="text in name, id, args or exception"),
        ] = None,
        since: Annotated[
            str | None,
            Query(max_length=64, description="first seen at or after: epoch, ISO-8601 or age"),
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="first seen before: as since")
        ] = None,
        sort: Annotated[
            str | None,
            Query(
                max_length=16,
                description="runtime or wait: longest first (unfinished tasks: so far),"
                " among the tasks first seen since `since` (default: the last 24 h)",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=512, description="next_cursor of the previous page")
        ] = None,
    ) -> dict[str, Any]:
        """Sorted, the answer has ``window``: the first-seen times it covers, and whether
        ``since`` was the default; pass that ``since`` with ``next_cursor`` to page on."""
        given = {"state": state, "name": name, "worker": worker, "queue": queue, "q": q,
                 "trace_id": trace_id, "root_id": root_id, "since": since, "until": until,
                 "sort": sort}  # fmt: skip
        found = executions.listing(given, datetime.now(UTC).timestamp())
        try:
            rows, next_cursor = store.list_tasks(found.filters, cursor, limit)
        except BadCursor as exc:
            raise HTTPException(422, str(exc)) from None
        answer: dict[str, Any] = {"tasks": rows, "next_cursor": next_cursor}
        if sorted_over := executions.window(found):
            answer["window"] = sorted_over
        return answer

    @router.get(
        "/tasks/{task_id}",
        summary="One task: its row, timeline, attempts, children, and why it waits",
        name="stemtrace.api.task",
    )
    def get_task(task_id: ID) -> dict[str, Any]:
        """``why``: its problems, ``due`` (ETA), ``queue`` (the broker's count now, tasks
        ahead of it, who consumes it), ``lost`` (its worker gone) and ``usual`` (its name's
        queue wait and run time p50 and p95 over the last day, beside its own)."""
        detail = task_detail(store, task_id)
        if not detail.get("planned"):
            detail["why"] = why(site.watch, store, detail, time.time())
        return detail

    @router.get(
        "/groups/{group_id}/members",
        summary="A page of a group's members",
        name="stemtrace.api.group_members",
    )
    def group_members(
        group_id: ID,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        total, members = store.group_page(group_id, offset, limit)
        if total == 0:
            raise not_found("group", group_id)
        return {"group_id": group_id, "size": total, "offset": offset, "members": members}


def _flow_routes(router: APIRouter, store: Backend, timeout: float) -> None:
    """A flow's graph and its waterfall."""

    @router.get(
        "/flows/{task_id}",
        summary="The flow graph containing a task (or group)",
        name="stemtrace.api.flow",
    )
    def get_flow(
        task_id: ID,
        expand: Annotated[
            list[str] | None, Query(description="group ids to show member by member")
        ] = None,
        collapse_over: Annotated[int, Query(ge=1, le=100_000)] = flows.COLLAPSE_OVER,
    ) -> dict[str, Any]:
        graph = load_flow(store, task_id, collapse_over, expand, timeout)
        graph["critical_path"] = flows.critical_path(graph, time.time())
        return graph

    @router.get(
        "/flows/{task_id}/waterfall", summary="The flow as a timeline, with its critical path"
    )
    def get_waterfall(task_id: ID) -> dict[str, Any]:
        graph = load_flow(store, task_id, flows.COLLAPSE_OVER, None, timeout)
        now = time.time()
        rows = flows.waterfall(graph, now, histories(store, graph))
        return {
            "root_id": graph["root_id"],
            "rows": rows,
            "start": min((r["start"] for r in rows), default=None),
            "end": max((r["end"] for r in rows), default=None),
            "critical_path": flows.critical_path(graph, now),
        }


def _export_routes(router: APIRouter, store: Backend, timeout: float) -> None:
    """A flow as Graphviz DOT and SVG."""

    @router.get(
        "/flows/{task_id}/graph.dot",
        summary="The flow as Graphviz DOT",
        name="stemtrace.api.flow_dot",
    )
    def get_dot(task_id: ID) -> Response:
        graph, critical = flow_and_path(store, task_id, timeout)
        return Response(
            export.to_dot(graph, critical),
            media_type="text/vnd.graphviz",
            headers={
                "Content-Disposition": f'attachment; filename="flow-{_safe_name(task_id)}.dot"'
            },
        )

    @router.get(
        "/flows/{task_id}/graph.svg",
        summary="The flow as SVG (needs Graphviz's dot)",
        name="stemtrace.api.flow_svg",
    )
    def get_svg(task_id: ID) -> Response:
        graph, critical = flow_and_path(store, task_id, timeout)
        try:
            svg = export.to_svg(graph, critical)
        except export.DotNotInstalled as exc:
            raise HTTPException(501, str(exc)) from None
        return Response(
            svg,
            media_type="image/svg+xml",
            headers={
                "Content-Disposition": f'inline; filename="flow-{_safe_name(task_id)}.svg"',
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            },
        )


def _trace_routes(router: APIRouter, store: Backend, timeout: float) -> None:
    """Everything one trace set off."""

    @router.get("/traces/{trace_id}", summary="Every task of one trace, and its flows")
    def get_trace(trace_id: ID) -> dict[str, Any]:
        rows, found = load_trace(store, trace_id, timeout)
        ends = [t["finished_at"] for t in rows if t["finished_at"] is not None]
        return {
            "trace_id": trace_id,
            "roots": [f["id"] for f in sorted(found["flows"], key=lambda f: f["started_at"])],
            "flows": [
                {
                    "id": f["id"],
                    "root_id": f["root"]["id"],
                    "name": f["root"].get("name"),
                    "state": f["root"]["state"],
                    "tasks": [t["id"] for t in f["tasks"]],
                    "failures": f["failures"],
                    "started_at": f["started_at"],
                    "finished_at": f["finished_at"],
                    "wall_time": f["wall_time"],
                }
                for f in found["flows"]
            ],
            "tasks": [listed(t) for t in rows],
            "count": len(rows),
            "failures": sum(t["state"] in states.BROKEN for t in rows),
            "started_at": min(t["sent_at"] or t["seen_at"] for t in rows),
            "finished_at": max(ends) if len(ends) == len(rows) else None,
        }

    @router.get(
        "/traces/{trace_id}/graph",
        summary="All the flows of one trace as one graph, under a trace node",
        name="stemtrace.api.trace_graph",
    )
    def get_trace_graph(trace_id: ID) -> dict[str, Any]:
        graph: dict[str, Any] = load_trace(store, trace_id, timeout)[1]["graph"]
        graph["critical_path"] = flows.critical_path(graph, time.time())
        return graph


def _fleet_routes(router: APIRouter, site: Site) -> None:
    """The registry, the workers, the consumer's health."""
    store = site.store

    @router.get("/registry", summary="Task definitions with counts, rates and runtimes")
    def get_registry() -> dict[str, Any]:
        return {"tasks": store.registry()}

    @router.get("/workers", summary="Workers: online or not, last heartbeat, what they run")
    def get_workers() -> dict[str, Any]:
        return {"workers": store.workers()}

    @router.get(
        "/health",
        summary="Consumer status, lag, counters and store size",
        responses={503: {"description": "the store cannot be read: status unavailable"}},
    )
    def health(response: Response) -> dict[str, Any]:
        """``status``: ``ok``, ``degraded`` (the consumer cannot read its broker or write
        the store) or ``unavailable`` (the store cannot be read: answered with 503)."""
        status = site.consumer_status()
        ok = status is None or bool(status.get("connected"))
        found: dict[str, Any] = {"version": __version__, "consumer": status}
        try:
            skipped = store.skipped(samples=5)
            counts = {"path": store.path, "size_bytes": store.size_bytes(), **store.counts()}
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            response.status_code = 503
            response.headers["Retry-After"] = str(RETRY_AFTER)
            reason = unavailable_reason(exc)
            return {"status": "unavailable", **found,
                    "store": {"path": store.path, "error": reason}}  # fmt: skip
        return {"status": "ok" if ok else "degraded", **found, "skipped": skipped,
                "store": counts}  # fmt: skip


def _stats_routes(router: APIRouter, store: Backend) -> None:
    """The series behind the overview's charts."""

    @router.get(
        "/stats",
        summary="Outcomes, failure rate, queue wait and run time per step, from the rollups",
        name="stemtrace.api.stats",
    )
    def get_stats(
        since: Annotated[
            str | None,
            Query(
                max_length=64,
                description="start: epoch, ISO-8601 or an age (15m, 2h, 7d); default 1h",
            ),
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="end (excluded): as since; default now")
        ] = None,
        step: Annotated[
            int | None,
            Query(
                ge=1,
                le=100 * 365 * 86400,
                description="seconds per point, a whole number of minutes (60, 300, ...);"
                " default: the shortest round step giving at most 360 points;"
                f" at most {stats.MAX_POINTS} points",
            ),
        ] = None,
        name: Annotated[
            str | None, Query(max_length=255, description="only this task name")
        ] = None,
        queue: Annotated[str | None, Query(max_length=255, description="only this queue")] = None,
        worker: Annotated[str | None, Query(max_length=255, description="only this worker")] = None,
    ) -> dict[str, Any]:
        """Give at most one of ``name``, ``queue`` and ``worker``.

        Each point counts what happened in ``[t, t + step)``: tasks sent,
        started, succeeded, failed, retried and revoked; ``failure_rate`` is
        failed / (succeeded + failed); ``wait_*`` (sent to started) and
        ``run_*`` (run time of finished tasks) are percentiles in seconds, read
        from log-scale buckets (exact to a bucket's width, 41 %). ``null``: nothing to measure.
        """
        query = stats.parse_query(
            since=since,
            until=until,
            step=step,
            filters={"name": name, "queue": queue, "worker": worker},
            now=time.time(),
        )
        return {
            "since": query.since,
            "until": query.until,
            "step": query.step,
            "filter": query.filter,
            "points": stats.series(store, query),
        }


def _safe_name(task_id: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in task_id)[:80]
