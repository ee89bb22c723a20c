"""``/problems``, ``GET /api/problems`` and the live count in the navigation.

All three read the site's :class:`stemtrace.server.watch.Watch`, so they show
the same problems; a problem clears by itself when its task moves on.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sse_starlette import EventSourceResponse

from stemtrace.model import problems
from stemtrace.server.errors import BadParameter
from stemtrace.server.pages import Pages
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.server.watch import Found, count_events

Kind = Annotated[str | None, Query(max_length=16)]
Limit = Annotated[int, Query(ge=1, le=5000)]
PAGE_LIMIT: Final = 50
"""Problems a page lists per kind; the count says how many there are."""


def create_problems_router(site: Site) -> APIRouter:
    """The problems page, its JSON twin, and the count's live stream."""
    router = APIRouter(route_class=SecureRoute)
    pages = Pages(site)
    watch = site.watch

    @router.get("/api/problems", summary="What is stuck, late or lost right now, and why")
    def api_problems(kind: Kind = None, limit: Limit = 200) -> dict[str, Any]:
        """Each problem: ``kind`` (one of ``counts``' keys), ``title``, ``reason`` in words,
        ``since`` (epoch seconds), and the ``task_id``, ``name``, ``queue`` and ``worker``
        it is about. ``counts`` per kind; ``partial`` when more tasks were in flight than
        one look reads."""
        found = watch.current()
        listed = _of_kind(found, kind)
        return {
            "at": found.at,
            "total": len(found.problems),
            "counts": found.counts,
            "inflight": found.inflight,
            "partial": found.partial,
            "thresholds": asdict(watch.thresholds),
            "problems": listed[:limit],
        }

    @router.get("/problems", name="stemtrace.problems", include_in_schema=False)
    def problems_page(request: Request, kind: Kind = None) -> HTMLResponse:
        found = watch.current()
        error = None
        try:
            listed = _of_kind(found, kind)
        except BadParameter as exc:
            error, listed = str(exc), []
        sections = [
            {"kind": k, "title": problems.TITLES[k], "count": found.counts[k],
             "rows": [p for p in listed if p["kind"] == k][:PAGE_LIMIT]}
            for k in problems.KINDS
        ]  # fmt: skip
        context = {"sections": sections, "found": found, "kind": kind or "", "error": error,
                   "kinds": problems.KINDS, "titles": problems.TITLES}  # fmt: skip
        blocks = ("listing",) if request.headers.get("HX-Request") else ()
        return pages.page(request, "problems.html", context, 422 if error else 200, blocks)

    @router.get("/live/problems", name="stemtrace.live_problems", include_in_schema=False)
    async def live_problems(
        request: Request, every: Annotated[float, Query(ge=1, le=60)] = 3.0
    ) -> EventSourceResponse:
        """``problems`` (the count, as its data) on connecting and whenever it changes."""
        return EventSourceResponse(count_events(watch, request.is_disconnected, every), ping=15)

    return router


def _of_kind(found: Found, kind: str | None) -> list[dict[str, Any]]:
    if not kind:
        return found.problems
    if kind not in problems.KINDS:
        raise BadParameter(f"kind must be one of {', '.join(problems.KINDS)}, not {kind!r}")
    return [p for p in found.problems if p["kind"] == kind]
