"""ASGI middleware that gives each HTTP request a trace id (FastAPI, Starlette, any ASGI app).

Plain ASGI, so it imports no web framework: the capture side stays light.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from stemtrace.capture.context import new_trace_id, reset_trace_id, set_trace_id, valid_trace_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def trace_id_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The W3C ``traceparent`` trace id, else a valid ``X-Request-ID``, else ``None``."""
    request_id = None
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"traceparent":
            match = _TRACEPARENT.match(raw_value.decode("latin-1").strip().lower())
            if match and match.group(1) != "ff" and match.group(2) != "0" * 32:
                return match.group(2)
        elif name == b"x-request-id" and request_id is None:
            request_id = valid_trace_id(raw_value.decode("latin-1").strip())
    return request_id


class TraceMiddleware:
    """Sets the trace id for every task sent while handling a request.

    The id comes from ``traceparent`` (its W3C trace id) or ``X-Request-ID``
    when they hold a valid one, or is made fresh. It is returned to the
    client in ``response_header`` and put in ``scope["state"]["trace_id"]``.

    ``app.add_middleware(TraceMiddleware)`` in FastAPI/Starlette.
    """

    def __init__(self, app: ASGIApp, *, response_header: str = "X-Trace-Id") -> None:
        self.app = app
        self.header = response_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        trace_id = trace_id_from_headers(scope.get("headers") or []) or new_trace_id()
        scope.setdefault("state", {})["trace_id"] = trace_id
        value = trace_id.encode("latin-1")

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (self.header, value)]
                message = {**message, "headers": headers}
            await send(message)

        token = set_trace_id(trace_id)
        try:
            await self.app(scope, receive, send_with_header)
        finally:
            reset_trace_id(token)
