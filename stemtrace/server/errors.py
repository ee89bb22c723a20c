"""The server's domain errors: what views raise, and what each becomes on the wire; and
the answer when the store itself cannot answer (503)."""

from __future__ import annotations

import html
import logging

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import NoMatchFound

logger = logging.getLogger("stemtrace")


class NotFound(LookupError):
    """No task, flow, group or trace of that id is known to this server."""

    status_code = 404

    def __init__(self, what: str, value: str) -> None:
        super().__init__(f"no {what} {value!r} is known to this stemtrace server")
        self.what = what
        self.value = value


class BadParameter(ValueError):
    """A query parameter that cannot be read (a time, a state); the message says why."""

    status_code = 422


RETRY_AFTER = 5
"""Seconds a client is told to wait before asking again while the store is unavailable."""

_UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta http-equiv="refresh" content="{retry}">
  <title>Store unavailable · stemtrace</title>
  <link rel="stylesheet" href="{css}">
</head>
<body>
  <main>
    <section class="empty">
      <h1>The store is unavailable</h1>
      <p>stemtrace cannot read its database right now: <code>{reason}</code></p>
      <p>It answers again as soon as the database does; this page tries again every
      {retry} seconds.</p>
    </section>
  </main>
</body>
</html>
"""


def unavailable_reason(exc: BaseException) -> str:
    """What the store said, on one line and bounded (never a traceback)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no reason given'}"[:300]


def store_unavailable(request: Request, exc: BaseException, *, page: bool) -> Response:
    """503 for a read the store could not answer (:func:`stemtrace.store.is_unavailable`):
    a page for a browser's ``page`` request, JSON (``detail``) for the API and the rest."""
    reason = unavailable_reason(exc)
    logger.warning("stemtrace: the store is unavailable on %s: %s", request.url.path, reason)
    headers = {"Retry-After": str(RETRY_AFTER), "Cache-Control": "no-store"}
    if page and "text/html" in request.headers.get("accept", ""):
        try:
            css = str(request.url_for("stemtrace.static", path="stemtrace.css").path)
        except NoMatchFound:
            css = "data:,"
        body = _UNAVAILABLE_PAGE.format(
            retry=RETRY_AFTER, css=html.escape(css), reason=html.escape(reason)
        )
        return HTMLResponse(body, 503, headers=headers)
    return JSONResponse({"detail": f"the store is unavailable: {reason}"}, 503, headers=headers)
