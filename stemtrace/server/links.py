"""Links to the app's own routes, made fast: pages of hundreds of links made each with
Starlette's ``url_for`` spent half their time finding the route.

Every link is still the one ``request.url_for`` makes, so pages work under any mount
prefix (the host's ``root_path``, the extension's router prefix).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
"""A path parameter's place in a route's template: braces, which :func:`quote` never leaves
in a value, so a value cannot be taken for a place."""
Template = tuple[str, str]
"""A route's path under a mount: the mount's own part as given, then the route's, with places."""
_TEMPLATES: dict[int, dict[tuple[str, str, tuple[str, ...]], Template]] = {}
"""Per app's router (by ``id``; a router compares by its routes, so it is no key), dropped
when the router goes: a later app at the same address starts afresh."""
_TEMPLATES_KEPT = 1_000
"""Templates kept per app: a ``root_path`` is the host's to choose, so there is no bound
on how many one app may be served under."""


def _route_template(request: Request, route: str, params: dict[str, str]) -> Template:
    """The path of ``route`` under the request's mount, each parameter a ``{name}`` place.

    Starlette's ``url_for`` tries each route in turn: a page of 500 links spent half its
    time there (the queues page). Its answer is kept for as long as the app lives, per
    mount and route; the mount's part (``root_path``) is kept apart, so braces in it are
    never taken for places.
    """
    root = str(request.scope.get("root_path", ""))
    key = (root, route, tuple(sorted(params)))
    router = request.scope.get("router")
    kept = _TEMPLATES.get(id(router)) if router is not None else None
    found = kept.get(key) if kept is not None else None
    if found is None:
        path = str(request.url_for(route, **{k: f"{{{k}}}" for k in params}).path)
        found = (root, path[len(root) :]) if path.startswith(root) else ("", path)
        if router is not None:
            if kept is None:
                kept = _TEMPLATES[id(router)] = {}
                weakref.finalize(router, _TEMPLATES.pop, id(router), None)
            if len(kept) >= _TEMPLATES_KEPT:
                kept.clear()
            kept[key] = found
    return found


def url_maker(request: Request) -> Callable[..., str]:
    """``url(route, query=None, **path)``: a route's path under the mount prefix, with a query.

    Empty query values are left out, so a form's blank fields make no noise.
    """

    def url(route: str, /, query: dict[str, Any] | None = None, **path: Any) -> str:
        quoted = {k: quote(str(v), safe="/" if k == "path" else "") for k, v in path.items()}
        root, places = _route_template(request, route, quoted)
        found = root + _PLACEHOLDER.sub(lambda m: quoted.get(m[1], m[0]), places)
        if query:
            pairs = [(k, v) for k, v in query.items() if v not in (None, "", [], ())]
            if pairs:
                found += "?" + urlencode(pairs, doseq=True)
        return found

    return url
