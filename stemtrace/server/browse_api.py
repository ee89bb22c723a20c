"""The JSON twins of the flows, traces and task-name pages: lists of workflows, traces, errors.

Same parameters as the pages (:mod:`stemtrace.server.lists` reads them for
both); a bad one answers 422 with the reason. Plain ``def`` handlers: the
reads run in the thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from stemtrace.server import lists
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.store import FLOW_OUTCOMES, Backend

Name = Annotated[str | None, Query(min_length=1, max_length=255, description="a task name")]
Since = Annotated[
    str | None,
    Query(max_length=64, description="first seen at or after: epoch, ISO-8601 or an age (15m)"),
]
Until = Annotated[str | None, Query(max_length=64, description="first seen before: as since")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="next_cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=500)]


def create_browse_api_router(site: Site) -> APIRouter:
    """``/api/flows``, ``/api/traces`` and ``/api/errors``, reading ``site.store``."""
    router = APIRouter(prefix="/api", tags=["api"], route_class=SecureRoute)
    _list_routes(router, site.store)
    _error_routes(router, site.store)
    return router


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _list_routes(router: APIRouter, store: Backend) -> None:
    @router.get(
        "/flows",
        summary="Workflows (flows of more than one task), newest first",
        name="stemtrace.api.flows",
    )
    def list_flows(
        name: Annotated[
            str | None,
            Query(min_length=1, max_length=255, description="the root task's name"),
        ] = None,
        outcome: Annotated[
            str | None,
            Query(max_length=16, description=f"one of {', '.join(FLOW_OUTCOMES)}"),
        ] = None,
        since: Since = None,
        until: Until = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Each flow: its ``id`` (what ``/api/flows/{id}`` opens), root task, ``shape``
        (how many chains, groups, chords and spawned tasks), ``tasks``, ``failures``,
        ``running``, ``outcome`` (``running``, ``failed``, ``broken``: failed with
        chain links left unrun, ``succeeded``), times, ``duration`` and ``trace_id``.
        ``outcome=failed`` keeps broken flows too."""
        filters = lists.flow_filters(name, outcome, since, until, _now())
        rows, next_cursor = lists.flows(store, filters, cursor, limit)
        return {"flows": rows, "next_cursor": next_cursor}

    @router.get(
        "/traces",
        summary="Traces (set on purpose, or of more than one task), newest first",
        name="stemtrace.api.traces",
    )
    def list_traces(
        since: Since = None, until: Until = None, cursor: Cursor = None, limit: Limit = 50
    ) -> dict[str, Any]:
        """Each trace: ``trace_id``, ``tasks``, ``failures``, ``running``, its
        ``first_task`` (id and name), times and ``duration`` (once nothing runs)."""
        rows, next_cursor = lists.traces(store, since, until, cursor, limit, _now())
        return {"traces": rows, "next_cursor": next_cursor}


def _error_routes(router: APIRouter, store: Backend) -> None:
    @router.get(
        "/errors",
        summary="Failures grouped by task name, exception type and normalized message",
        name="stemtrace.api.errors",
    )
    def list_errors(
        name: Name = None,
        since: Annotated[
            str | None,
            Query(
                max_length=64,
                description="failed at or after: epoch, ISO-8601 or an age;"
                f" default {lists.ERRORS_SINCE}",
            ),
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="failed before: as since; default now")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Most failures first. A message is normalized (numbers, ids and quoted
        values replaced), so one error met with different values is one group.
        Each group: ``name``, ``exc_type``, ``message``, ``fingerprint``,
        ``count`` in the range, ``first_seen`` and ``last_seen`` (ever), the
        ``last_task_id`` (its latest failure) and ``hours``: ``[hour start,
        failures]`` in the range. All task names when ``name`` is not given."""
        window = lists.error_window(since, until, _now())
        groups = store.error_groups(name, window.since, window.until, limit)
        return {"name": name, "since": window.since, "until": window.until, "groups": groups}
