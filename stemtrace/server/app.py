"""The standalone server, and the consumer wiring shared with the extension."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from stemtrace import __version__
from stemtrace.server.extension import StemtraceExtension
from stemtrace.server.security import SecurityHeadersMiddleware, builtin_auth
from stemtrace.settings import Settings

logger = logging.getLogger("stemtrace")


def create_app(settings: Settings) -> FastAPI:
    """The standalone app: pages at ``/``, the API under ``/api``, with the built-in auth."""
    auth = builtin_auth(settings.auth_user, settings.auth_password, settings.auth_token)
    ext = StemtraceExtension(settings=settings, dependencies=[Depends(auth)] if auth else [])
    app = FastAPI(
        title="stemtrace",
        version=__version__,
        lifespan=ext.lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.stemtrace = ext
    app.include_router(ext.router)
    app.add_middleware(SecurityHeadersMiddleware)

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        logger.warning("stemtrace: database error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the database is busy or unavailable: {exc}"}, 503)

    return app
