"""Server-rendered pages (Jinja2), the static files, and the live stream.

Every link is made with :func:`stemtrace.server.links.url_maker` (what
``request.url_for`` makes), so pages work under any mount prefix. Values that
came from tasks are rendered only through Jinja's autoescaping or
:func:`stemtrace.server.render.pretty` (which escapes): they are hostile text.
Handlers are plain ``def``: SQLite reads run in the thread pool, never on the
event loop.
"""

from __future__ import annotations

import mimetypes
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket
from sse_starlette import EventSourceResponse

from stemtrace import __version__
from stemtrace.core import states
from stemtrace.model import flows, traces
from stemtrace.server import executions, overview, render
from stemtrace.server.errors import BadParameter, NotFound
from stemtrace.server.links import url_maker
from stemtrace.server.live import merged
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.server.views import (
    FLOW_SLOTS,
    histories,
    load_trace,
    mark_lost,
    task_detail,
)
from stemtrace.server.watch import count_events
from stemtrace.server.why import why
from stemtrace.store import BadCursor

PACKAGE = Path(__file__).resolve().parent.parent
STATIC = PACKAGE / "static"
Text = Annotated[str | None, Query(max_length=255)]
TREE_LIMIT = 500
"""Steps listed under a flow's graph; the graph itself shows every node."""
EMBED_LIMIT = 2000
"""Flows up to this many nodes travel inside the page; bigger ones the graph fetches."""


class CompiledTemplates(BytecodeCache):
    """The templates' compiled code, kept for the process: each app (a ``create_app``, a
    mounted extension) compiles a template once between them, not once each. Only for
    the environments :func:`create_templates` makes, which are configured alike; a
    template whose source changed (Jinja's checksum) compiles again."""

    def __init__(self) -> None:
        self.found: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        if (code := self.found.get(bucket.key)) is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self.found[bucket.key] = bucket.bytecode_to_string()


COMPILED = CompiledTemplates()


def create_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    env = templates.env
    env.bytecode_cache = COMPILED
    env.filters.update(
        when=render.when,
        ago=render.ago,
        duration=render.duration,
        pretty=render.pretty,
        short_id=render.short_id,
        count=render.count,
        retry_policy=render.retry_policy,
    )
    env.globals.update(
        STATE_ICONS=render.STATE_ICONS,
        STATE_LOOKS=states.LOOKS,  # handed to the graph island as JSON (graph_island)
        version=__version__,
        json_text=render.json_text,
    )
    return templates


def create_pages_router(site: Site) -> APIRouter:
    """The pages, the static files and the live stream, reading ``site``."""
    router = APIRouter(route_class=SecureRoute, include_in_schema=False)
    pages = Pages(site)
    _overview_routes(router, pages)
    _execution_routes(router, pages)
    _task_routes(router, pages)
    _flow_routes(router, pages)
    _fleet_routes(router, pages)
    _asset_routes(router, site)
    return router


class Pages:
    """Renders the templates with what every page shows (the broker's trouble, the time)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.store = site.store
        self.templates = create_templates()

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        status_code: int = 200,
        blocks: tuple[str, ...] = (),
    ) -> HTMLResponse:
        """``name`` rendered whole, or only its ``blocks`` (an htmx swap of part of it)."""

        full = {
            "request": request,
            "url": url_maker(request),
            "consumer_problem": self.site.consumer_problem(),
            "standby": self.site.standby(),
            "now": datetime.now(UTC).timestamp(),
            **context,
        }
        response: HTMLResponse
        if blocks:
            response = HTMLResponse(render_blocks(self.templates, name, blocks, full), status_code)
        else:
            response = self.templates.TemplateResponse(request, name, full, status_code=status_code)
        response.headers["Vary"] = "HX-Request, HX-Target"
        return response

    def not_found(
        self,
        request: Request,
        what: str,
        value: str,
        again: tuple[str, dict[str, str]],
        watch: str | None = None,
    ) -> Response:
        """A 404 that keeps watching: the page opens itself once the record arrives.

        ``again`` is the route to ask again and its path parameters;
        ``watch`` is the task id whose change should wake the page (``None``:
        any change, for a group or trace id the consumer does not announce).
        While waiting, htmx asks again on each change; the answer is 204
        until the record exists, then ``HX-Refresh`` reloads the whole page.
        """
        if _is_waiting_poll(request):
            return Response(status_code=204)
        live = {"task": watch} if watch else None
        context = {"what": what, "value": value, "live": live, "again": again}
        return self.page(request, "404.html", context, status_code=404)

    @staticmethod
    def found(request: Request) -> Response | None:
        """The waiting 404 page asked again and the record now exists: reload it."""
        if _is_waiting_poll(request):
            return Response(status_code=200, headers={"HX-Refresh": "true"})
        return None

    def planned(self, request: Request, detail: dict[str, Any]) -> Response:
        """An id that has not run, or a group's: what it is, and a way to its flow.

        A ``PLANNED`` page watches like the 404 does, and reloads once the
        task is sent or can no longer run.
        """
        if _is_waiting_poll(request):
            if detail["state"] == states.PLANNED:
                return Response(status_code=204)
            return Response(status_code=200, headers={"HX-Refresh": "true"})
        return self.page(request, "planned.html", {"task": detail})


def _overview_routes(router: APIRouter, pages: Pages) -> None:
    """The landing page: charts over a range, the task names that stand out; charts alone live."""
    store = pages.store

    @router.get("/", name="stemtrace.overview")
    def overview_page(
        request: Request,
        span: Annotated[str, Query(alias="range", max_length=16)] = overview.DEFAULT_RANGE,
        name: Text = None,
        queue: Text = None,
        worker: Text = None,
    ) -> HTMLResponse:
        form = {"range": span, "name": name or "", "queue": queue or "", "worker": worker or ""}
        context: dict[str, Any] = {"form": form, "ranges": overview.RANGES, "error": None}
        if store.is_empty():
            context["empty_store"] = True
        else:
            now = datetime.now(UTC).timestamp()
            filters = {"name": name, "queue": queue, "worker": worker}
            try:
                context.update(overview.build(store, span, filters, now, url_maker(request)))
            except BadParameter as exc:
                context["error"] = str(exc)
        status = 422 if context["error"] else 200
        if _is_htmx(request, "overview-live"):
            return pages.page(request, "overview.html", context, status, blocks=("charts",))
        choices = store.filter_choices()  # names announced by workers, and those seen run
        context.update(
            names=sorted({*choices["names"], *store.since_ever("name", metrics=())}),
            workers=choices["workers"],
            queues=sorted(store.since_ever("queue", metrics=())),
        )
        return pages.page(request, "overview.html", context, status)


def _execution_routes(router: APIRouter, pages: Pages) -> None:
    """The executions list, with its filters; its rows alone for an htmx swap."""
    store = pages.store

    @router.get("/executions", name="stemtrace.executions")
    def executions_page(
        request: Request,
        state: Annotated[list[str] | None, Query()] = None,
        name: Text = None,
        worker: Text = None,
        queue: Text = None,
        trace_id: Text = None,
        q: Text = None,
        since: Text = None,
        until: Text = None,
        sort: Annotated[str | None, Query(max_length=16)] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cols: Annotated[list[str] | None, Query(max_length=16)] = None,
    ) -> Response:
        """``cols``: the optional columns the page's header has (``eta`` or ``none``), sent
        by its live refresh of the rows; when they no longer fit, the whole page reloads."""
        given = {"name": name, "worker": worker, "queue": queue, "trace_id": trace_id, "q": q,
                 "since": since, "until": until, "sort": sort}  # fmt: skip
        form: dict[str, Any] = {"state": [s for s in state or () if s]}
        form.update((key, value or "") for key, value in given.items())
        now = datetime.now(UTC).timestamp()
        error = None
        rows: list[dict[str, Any]] = []
        next_cursor = found = None
        try:
            found = executions.listing(form, now)
            rows, next_cursor = store.list_tasks(found.filters, cursor, limit)
        except (BadParameter, BadCursor) as exc:
            error = str(exc)
        url = url_maker(request)
        show_eta = any(row["eta"] for row in rows)
        pinned = form if found is None else dict(form, since=repr(found.filters.since))
        context = {
            "rows": executions.paced(rows, now),
            "form": form,
            "error": error,
            "cursor": cursor,
            "next_cursor": next_cursor,
            "next_form": pinned if form["sort"] else form,
            "limit": limit,
            "states": states.ALL,
            **store.filter_choices(),
            "queues": sorted(store.since_ever("queue", metrics=())),
            "empty_store": not rows and not any(form.values()) and store.is_empty(),
            "show_eta": show_eta,
            "sorted_by": executions.SORT_LABELS.get(form["sort"]) if found else None,
            "defaulted": found is not None and found.defaulted,
            "sort_window": executions.SORT_WINDOW,
            # links that keep a bad parameter would only refuse it again
            "sort_links": {} if error else executions.sort_links(url, form, limit),
            "window_links": [] if error else executions.window_links(url, form, limit),
        }
        if _is_htmx(request, "rows"):
            if cols and not error and show_eta != ("eta" in cols):
                return Response(status_code=200, headers={"HX-Refresh": "true"})
            return pages.page(request, "_rows.html", context, 422 if error else 200)
        return pages.page(request, "executions.html", context, 422 if error else 200)


def _task_routes(router: APIRouter, pages: Pages) -> None:
    """One task's page (or its planned id's, or a waiting 404)."""
    store = pages.store

    @router.get("/tasks/{task_id:path}", name="stemtrace.task")
    def task(request: Request, task_id: Annotated[str, render.PathId]) -> Response:
        try:
            detail = task_detail(store, task_id)
        except NotFound:
            return pages.not_found(
                request, "task", task_id, ("stemtrace.task", {"task_id": task_id}), task_id
            )
        if detail.get("planned"):
            return pages.planned(request, detail)
        if reload := pages.found(request):
            return reload
        detail["why"] = why(pages.site.watch, store, detail, datetime.now(UTC).timestamp())
        context = {"task": detail, "bar": render.timeline_bar(detail["phases"])}
        partial = (
            request.headers.get("HX-Request") and request.headers.get("HX-Target") == "task-live"
        )
        name = "_task.html" if partial else "task.html"
        return pages.page(request, name, context)


def _flow_routes(router: APIRouter, pages: Pages) -> None:
    """A flow's page and a trace's page."""
    store = pages.store

    @router.get("/flows/{task_id:path}", name="stemtrace.flow")
    def flow(request: Request, task_id: Annotated[str, render.PathId]) -> Response:
        with FLOW_SLOTS:  # see FLOW_SLOTS: big flows take turns
            rows = store.flow_rows(task_id)
            if rows is None:
                again = ("stemtrace.flow", {"task_id": task_id})
                return pages.not_found(request, "task or group", task_id, again)
            if reload := pages.found(request):
                return reload
            mark_lost(store, rows, pages.site.thresholds.worker_timeout)
            graph = flows.build_flow(rows)
            now = datetime.now(UTC).timestamp()
            critical = flows.critical_path(graph, now)
            graph["critical_path"] = critical  # the graph island highlights it too
            lines = flows.waterfall(graph, now, histories(store, graph))
            tree = render.flow_tree(graph)
            root = _root_node(graph)
            context = {
                "flow": graph,
                "root": root,
                "root_name": root.get("name") or root["id"],
                "trace_id": next((r["trace_id"] for r in rows if r.get("trace_id")), None),
                "tree": tree[:TREE_LIMIT],
                "tree_hidden": max(len(tree) - TREE_LIMIT, 0),
                "embed": len(graph["nodes"]) <= EMBED_LIMIT,
                "task_id": task_id,
                "critical": critical,
                "critical_ids": set(critical["nodes"]),
                "waterfall": render.waterfall_svg(lines, set(critical["nodes"])),
                "can_svg": shutil.which("dot") is not None,
                "current": _current_node(graph, rows, task_id),
            }
        if _is_htmx(request, "flow-live"):  # the live refresh: head and body, out of band
            context["swap"] = True
            return pages.page(request, "flow.html", context, blocks=("flow_head", "flow_body"))
        return pages.page(request, "flow.html", context)

    @router.get("/traces/{trace_id:path}", name="stemtrace.trace")
    def trace(request: Request, trace_id: Annotated[str, render.PathId]) -> Response:
        """What one request set off, end to end: its flows as one graph, one waterfall."""
        try:
            rows, traced = load_trace(store, trace_id, pages.site.thresholds.worker_timeout)
        except NotFound:
            again = ("stemtrace.trace", {"trace_id": trace_id})
            return pages.not_found(request, "trace", trace_id, again)
        if reload := pages.found(request):
            return reload
        graph = traced["graph"]
        now = datetime.now(UTC).timestamp()
        critical = flows.critical_path(graph, now)
        graph["critical_path"] = critical
        lines = flows.waterfall(graph, now, histories(store, graph))
        context = {
            "trace_id": trace_id,
            "flows": traced["flows"],
            "count": len(rows),
            "failures": sum(r["state"] in states.BROKEN for r in rows),
            "graph": graph,
            "embed": len(graph["nodes"]) <= EMBED_LIMIT,
            "current": traces.trace_node_id(trace_id),
            "waterfall": render.waterfall_svg(lines, set(critical["nodes"])),
            "waterfall_of": "trace",
        }
        return pages.page(request, "trace.html", context)


def _fleet_routes(router: APIRouter, pages: Pages) -> None:
    """The registry, the consumer's status, the workers."""
    store = pages.store
    site = pages.site

    @router.get("/registry", name="stemtrace.registry")
    def registry(request: Request) -> HTMLResponse:
        tasks = store.registry()
        return pages.page(request, "registry.html", {"tasks": tasks})

    @router.get("/status", name="stemtrace.status")
    def status(request: Request) -> HTMLResponse:
        context = {
            "consumer": site.consumer_status(),
            "skipped": store.skipped(),
        }
        return pages.page(request, "status.html", context)

    @router.get("/workers", name="stemtrace.workers")
    def workers(request: Request) -> HTMLResponse:
        return pages.page(request, "workers.html", {"workers": store.workers()})


def _asset_routes(router: APIRouter, site: Site) -> None:
    """The static files and the live stream (server-sent events)."""

    @router.get("/static/{path:path}", name="stemtrace.static")
    def static(path: str) -> Response:
        if len(path) > 200 or not path.isprintable():
            raise HTTPException(400, "not a static file's path")
        try:
            target = (STATIC / path).resolve()
            exists = target.is_relative_to(STATIC) and target.is_file()
        except (ValueError, OSError):
            raise HTTPException(400, "not a static file's path") from None
        if not exists:
            raise HTTPException(404, "no such file")
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(
            target, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"}
        )

    @router.get("/live", name="stemtrace.live")
    async def live(
        request: Request,
        task: Annotated[list[str] | None, Query(max_length=255)] = None,
        every: Annotated[float, Query(ge=0.25, le=60)] = 0.25,
    ) -> EventSourceResponse:
        """``changed`` when a task of ``task`` (or any) changed, at most once per ``every`` s;
        ``problems``: the number of problems, when it changes (the navigation shows it)."""
        wanted = frozenset(task) if task else None
        stream = site.broadcaster.events(
            wanted, is_disconnected=request.is_disconnected, min_interval=every
        )
        counts = count_events(site.watch, request.is_disconnected)
        return EventSourceResponse(merged(stream, counts), ping=None)


def render_blocks(
    templates: Jinja2Templates, name: str, blocks: tuple[str, ...], context: dict[str, Any]
) -> str:
    """Only the named blocks of a page template: the markup an htmx swap replaces.

    The same template renders the whole page, so a live refresh can never
    drift from the first render. A block imports the macros it uses itself.
    """
    template = templates.env.get_template(name)
    rendered = template.new_context(context)
    return "".join("".join(template.blocks[block](rendered)) for block in blocks)


def _root_node(graph: dict[str, Any]) -> dict[str, Any]:
    """The flow's root node (the first node if the root is not among them)."""
    nodes = graph["nodes"]
    return next((n for n in nodes if n["id"] == graph.get("root_id")), nodes[0])


def _is_htmx(request: Request, target: str) -> bool:
    return bool(request.headers.get("HX-Request")) and request.headers.get("HX-Target") == target


def _current_node(graph: dict[str, Any], rows: list[dict[str, Any]], task_id: str) -> str:
    """The graph node to highlight: the task, or the collapsed group it is in."""
    ids = {node["id"] for node in graph["nodes"]}
    if task_id in ids:
        return task_id
    group_id = next((r["group_id"] for r in rows if r["id"] == task_id), None) or task_id
    group_node = flows.group_node_id(group_id)
    return group_node if group_node in ids else task_id


def _is_waiting_poll(request: Request) -> bool:
    return bool(request.headers.get("HX-Request")) and request.headers.get("HX-Target") == "waiting"
