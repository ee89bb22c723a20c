"""Security headers on every response, and the standalone server's own auth."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stemtrace.server.errors import BadParameter, NotFound, store_unavailable
from stemtrace.store import is_unavailable

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SecureRoute(APIRoute):
    """A route whose responses carry :data:`HEADERS` (stemtrace's routes, even when mounted),
    and that answers 503 when the store cannot (down, restarting, locked), never 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        page = "api" not in self.path.split("/")

        async def secured(request: Request) -> Response:
            try:
                response = await handler(request)
            except (NotFound, BadParameter) as exc:  # a view's answer: 404 or 422
                raise HTTPException(exc.status_code, str(exc), dict(HEADERS)) from None
            except StarletteHTTPException as exc:  # 401, 404, 422 raised by us or a dependency
                exc.headers = {**HEADERS, **(exc.headers or {})}
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                response = store_unavailable(request, exc, page=page)
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return secured


class SecurityHeadersMiddleware:
    """The same headers on every response of the standalone app, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in self.raw if k not in present]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_secured)


def builtin_auth(
    username: str | None, password: str | None, token: str | None
) -> Callable[[Request], None] | None:
    """A dependency for HTTP basic auth and/or a bearer token; ``None`` when neither is set."""
    if not token and not (username and password):
        return None

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if token and scheme == "bearer" and _same(value.strip(), token):
            return
        if username and password and scheme == "basic":
            try:
                user, _, given = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, given = "", ""
            if _same(user, username) & _same(given, password):
                return
        challenge = 'Basic realm="stemtrace"' if username and password else "Bearer"
        raise HTTPException(401, "authentication required", {"WWW-Authenticate": challenge})

    return check


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
