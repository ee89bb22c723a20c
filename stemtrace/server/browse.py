"""Pages to browse by: recent workflows, recent traces, and a page per task name.

Rendered through :class:`stemtrace.server.pages.Pages`, so they look and
guard like every other page; what they read is shared with their JSON twins
(:mod:`stemtrace.server.lists`). A task name's charts are the overview's
(:func:`stemtrace.server.overview.build`) for that name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from stemtrace.core import states
from stemtrace.server import charts, lists, overview
from stemtrace.server.errors import BadParameter
from stemtrace.server.links import url_maker
from stemtrace.server.pages import Pages
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.store import FLOW_OUTCOMES, Backend

Text = Annotated[str | None, Query(max_length=255)]
Cursor = Annotated[str | None, Query(max_length=512)]
Limit = Annotated[int, Query(ge=1, le=500)]
NAME_RANGE: Final = "24h"
ERROR_GROUPS: Final = 20
"""Error groups a task-name page shows, most failures first."""
OUTCOME_LOOKS: Final = {
    "running": {"state": "started", "help": "a task of it still runs"},
    "failed": {"state": "failure", "help": "a task failed, was revoked or rejected"},
    "broken": {"state": "failure", "help": "a task failed, and chain links after it never ran"},
    "succeeded": {"state": "success", "help": "every task finished without failing"},
}


def create_browse_router(site: Site) -> APIRouter:
    """``/flows``, ``/traces`` and ``/names/{name}``, reading ``site``."""
    router = APIRouter(route_class=SecureRoute, include_in_schema=False)
    pages = Pages(site)
    _list_routes(router, pages)
    _name_routes(router, pages)
    return router


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _list_routes(router: APIRouter, pages: Pages) -> None:
    store = pages.store

    @router.get("/flows", name="stemtrace.flows")
    def flows_page(
        request: Request,
        name: Text = None,
        outcome: Annotated[str | None, Query(max_length=16)] = None,
        since: Text = None,
        until: Text = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> HTMLResponse:
        form = {
            "name": name or "",
            "outcome": outcome or "",
            "since": since or "",
            "until": until or "",
        }
        rows: list[dict[str, Any]] = []
        next_cursor = error = None
        try:
            filters = lists.flow_filters(name, outcome, since, until, _now())
            rows, next_cursor = lists.flows(store, filters, cursor, limit)
        except BadParameter as exc:
            error = str(exc)
        context = {
            **_listed(rows, form, error, cursor, next_cursor, limit),
            "outcomes": FLOW_OUTCOMES,
            "outcome_looks": OUTCOME_LOOKS,
            "names": store.filter_choices()["names"],
        }
        return pages.page(request, "flows.html", context, 422 if error else 200)

    @router.get("/traces", name="stemtrace.traces")
    def traces_page(
        request: Request,
        since: Text = None,
        until: Text = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> HTMLResponse:
        form = {"since": since or "", "until": until or ""}
        rows: list[dict[str, Any]] = []
        next_cursor = error = None
        try:
            rows, next_cursor = lists.traces(store, since, until, cursor, limit, _now())
        except BadParameter as exc:
            error = str(exc)
        context = _listed(rows, form, error, cursor, next_cursor, limit)
        return pages.page(request, "traces.html", context, 422 if error else 200)


def _listed(
    rows: list[dict[str, Any]],
    form: dict[str, str],
    error: str | None,
    cursor: str | None,
    next_cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """What a list page shows: its rows, its filters as given, why it refused them, paging."""
    return {"rows": rows, "form": form, "error": error, "cursor": cursor,
            "next_cursor": next_cursor, "limit": limit}  # fmt: skip


def _name_routes(router: APIRouter, pages: Pages) -> None:
    store = pages.store

    @router.get("/names/{name:path}", name="stemtrace.task_name")
    def task_name(
        request: Request,
        name: Annotated[str, Path(min_length=1, max_length=255)],
        span: Annotated[str, Query(alias="range", max_length=16)] = NAME_RANGE,
    ) -> Response:
        entry = lists.registry_entry(store, name)
        if entry is None:
            again = ("stemtrace.task_name", {"name": name})
            return pages.not_found(request, "task name", name, again)
        if reload := pages.found(request):
            return reload
        context: dict[str, Any] = {
            "task": entry,
            "form": {"range": span},
            "ranges": overview.RANGES,
            "error": None,
        }
        now = _now()
        try:
            built = overview.build(store, span, {"name": name}, now, url_maker(request))
        except BadParameter as exc:
            context["error"] = str(exc)
        else:
            context.update(built)
            window = lists.Window(built["query"].since, built["query"].until)
            context["groups"] = error_groups(store, name, window)
        return pages.page(request, "task_name.html", context, 422 if context["error"] else 200)


def error_groups(store: Backend, name: str, window: lists.Window) -> list[dict[str, Any]]:
    """The name's error groups over ``window``, each with its sparkline and latest traceback."""
    found = []
    for group in store.error_groups(name, window.since, window.until, ERROR_GROUPS):
        first, counts = lists.hour_counts(group["hours"], window)
        label = f"{group['exc_type']} per hour"
        found.append({
            **group,
            "spark": charts.sparkline(counts, label=label, start=first, step=lists.HOUR),
            "traceback": lists.latest_traceback(store, group),
            "failures": {"name": name, "state": states.FAILURE, "q": group["exc_type"]},
        })  # fmt: skip
    return found
