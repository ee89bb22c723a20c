"""Links to the app's own routes, made fast: pages of hundreds of links made each with
Starlette's ``url_for`` spent half their time finding the route.

Every link is still the one ``request.url_for`` makes, so pages work under any mount
prefix (the host's ``root_path``, the extension's router prefix).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
"""A path parameter's place in a route's template: braces, which :func:`quote` never leaves
in a value, so a value cannot be taken for a place."""
_TEMPLATES: dict[tuple[int, str, str, tuple[str, ...]], str] = {}
_TEMPLATES_KEPT = 1_000


def _route_template(request: Request, route: str, params: dict[str, str]) -> str:
    """The path of ``route`` under the request's mount, each parameter a ``{name}`` place.

    Starlette's ``url_for`` tries each route in turn: a page of 500 links spent half its
    time there (the queues page). Its answer for one app, mount and route is kept.
    """
    key = (id(request.scope.get("router")), request.scope.get("root_path", ""), route,
           tuple(sorted(params)))  # fmt: skip
    found = _TEMPLATES.get(key)
    if found is None:
        found = str(request.url_for(route, **{k: f"{{{k}}}" for k in params}).path)
        if len(_TEMPLATES) >= _TEMPLATES_KEPT:  # a root_path is the host's to choose
            _TEMPLATES.clear()
        _TEMPLATES[key] = found
    return found


def url_maker(request: Request) -> Callable[..., str]:
    """``url(route, query=None, **path)``: a route's path under the mount prefix, with a query.

    Empty query values are left out, so a form's blank fields make no noise.
    """

    def url(route: str, /, query: dict[str, Any] | None = None, **path: Any) -> str:
        quoted = {k: quote(str(v), safe="/" if k == "path" else "") for k, v in path.items()}
        found = _PLACEHOLDER.sub(lambda m: quoted[m[1]], _route_template(request, route, quoted))
        if query:
            pairs = [(k, v) for k, v in query.items() if v not in (None, "", [], ())]
            if pairs:
                found += "?" + urlencode(pairs, doseq=True)
        return found

    return url
