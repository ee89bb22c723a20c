"""The standalone server: store + consumer + API in one FastAPI app."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from stemtrace import __version__
from stemtrace.capture.publisher import describe_url
from stemtrace.consumer import Consumer
from stemtrace.server.api import create_api_router
from stemtrace.settings import Settings
from stemtrace.store.retention import Retention
from stemtrace.store.schema import Store
from stemtrace.transports import open_reader

logger = logging.getLogger("stemtrace")


def source_name(settings: Settings) -> str:
    """The cursor key of one stream: the broker URL (without password) and the stream key."""
    return f"{describe_url(settings.broker)}#{settings.stream}"


def build_consumer(settings: Settings, store: Store) -> Consumer:
    return Consumer(
        store,
        lambda: open_reader(settings.broker, stream=settings.stream),
        source=source_name(settings),
        retention=Retention(max_age=settings.retention_seconds, max_tasks=settings.task_limit),
    )


def create_app(settings: Settings) -> FastAPI:
    """The standalone app: the API under ``/api``, the consumer running inside when enabled."""
    store = Store(settings.db)
    consumer = build_consumer(settings, store) if settings.consumer else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if consumer is not None:
            consumer.start()
            logger.info("stemtrace: reading %s into %s", source_name(settings), settings.db)
        try:
            yield
        finally:
            if consumer is not None:
                consumer.stop()
            store.close()

    app = FastAPI(title="stemtrace", version=__version__, lifespan=lifespan)
    app.state.store = store
    app.state.consumer = consumer

    def status() -> dict[str, Any] | None:
        return consumer.status.as_dict() if consumer is not None else None

    app.include_router(create_api_router(store, status))

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("docs")

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        logger.warning("stemtrace: database error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the database is busy or unavailable: {exc}"}, 503)

    return app
