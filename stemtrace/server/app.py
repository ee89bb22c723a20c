"""The standalone server, and the consumer wiring shared with the extension."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from stemtrace import __version__
from stemtrace.server.extension import StemtraceExtension
from stemtrace.server.security import HEADERS, SecurityHeadersMiddleware, builtin_auth
from stemtrace.settings import Settings

logger = logging.getLogger("stemtrace")


def create_app(settings: Settings) -> FastAPI:
    """The standalone app: pages at ``/``, the API under ``/api``, with the built-in auth."""
    auth = builtin_auth(settings.auth_user, settings.auth_password, settings.auth_token)
    guard = [Depends(auth)] if auth else []
    ext = StemtraceExtension(settings=settings, dependencies=guard)
    app = FastAPI(
        title="stemtrace",
        version=__version__,
        lifespan=ext.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the same auth as everything else
    )

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    app.state.stemtrace = ext
    app.include_router(ext.router)
    app.add_middleware(SecurityHeadersMiddleware)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> PlainTextResponse:
        # Answered outside the middleware stack: the security headers are set here. (A store
        # that cannot answer is a 503, answered by each route: see security.SecureRoute.)
        logger.error("stemtrace: error on %s", request.url.path, exc_info=exc)
        return PlainTextResponse("internal error (logged by the server)", 500, headers=HEADERS)

    return app
