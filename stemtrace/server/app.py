"""The standalone server, and the consumer wiring shared with the extension."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

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
        # Answered outside the middleware stack: the security headers are set here.
        logger.error("stemtrace: error on %s", request.url.path, exc_info=exc)
        return PlainTextResponse("internal error (logged by the server)", 500, headers=HEADERS)

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        logger.warning("stemtrace: database error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the database is busy or unavailable: {exc}"}, 503)

    return app
