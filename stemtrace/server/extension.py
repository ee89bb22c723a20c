"""``StemtraceExtension``: stemtrace inside an existing FastAPI app, or standing alone.

```python
flow = StemtraceExtension(broker_url="redis://localhost:6379/0")
app = FastAPI(lifespan=flow.lifespan)
app.include_router(flow.router, prefix="/stemtrace")
```

Everything (pages, API, static files, the live stream, ``/metrics``) hangs off ``router``,
so the host app's prefix and ``dependencies=`` (its auth) cover all of it.
The consumer runs in the lifespan as a background thread, or not at all when
a separate ``stemtrace consume`` feeds the same database; live updates work
either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, params

from stemtrace.ingest.consumer import Consumer, build_celery_events_consumer, build_consumer
from stemtrace.server.api import create_api_router
from stemtrace.server.browse import create_browse_router
from stemtrace.server.browse_api import create_browse_api_router
from stemtrace.server.live import Broadcaster
from stemtrace.server.metrics import create_metrics_router
from stemtrace.server.pages import create_pages_router
from stemtrace.server.problems import create_problems_router
from stemtrace.server.queues import create_queues_router
from stemtrace.server.security import SecureRoute
from stemtrace.server.site import Site
from stemtrace.server.worker_page import create_worker_router
from stemtrace.settings import Settings
from stemtrace.store import Backend, Stoppable, listen_for_changes, open_store

logger = logging.getLogger("stemtrace")


class StemtraceExtension:
    """The store, the consumer, the live broadcaster and the routes of one stemtrace."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        stream: str | None = None,
        db: str | None = None,
        consumer: bool | None = None,
        retention_days: float | None = None,
        max_tasks: int | None = None,
        dependencies: Sequence[params.Depends] = (),
        settings: Settings | None = None,
        include_in_schema: bool = True,
    ) -> None:
        """Keyword arguments win over ``STEMTRACE_*`` variables; ``settings`` replaces both.

        ``dependencies`` guard every route (pages, API, live stream, static
        files): pass the host app's auth here. The API's routes join the host
        app's OpenAPI document (there is no second one under the prefix);
        ``include_in_schema=False`` keeps them out of it.
        """
        self.settings = settings or Settings.from_env(
            broker=broker_url,
            stream=stream,
            db=db,
            consumer=consumer,
            retention_days=retention_days,
            max_tasks=max_tasks,
        )
        self.store: Backend = open_store(self.settings.db)
        self.broadcaster = Broadcaster()
        self.consumer: Consumer | None = None
        self.celery_events: Consumer | None = None
        if self.settings.consumer:
            self.consumer = build_consumer(self.settings, self.store)
            self.consumer.listeners.append(self.broadcaster.notify)
            self.celery_events = build_celery_events_consumer(self.settings, self.store)
            if self.celery_events is not None:
                self.celery_events.listeners.append(self.broadcaster.notify)
        self.router = APIRouter(
            dependencies=list(dependencies),
            route_class=SecureRoute,
            include_in_schema=include_in_schema,
        )
        self.site = Site(
            store=self.store,
            broadcaster=self.broadcaster,
            consumer_status=self.consumer_status,
            consumer_problem=self.consumer_problem,
            standby=self.standby,
            thresholds=self.settings.thresholds,
        )
        self.router.include_router(create_api_router(self.site))
        self.router.include_router(create_pages_router(self.site))
        self.router.include_router(create_browse_router(self.site))
        self.router.include_router(create_browse_api_router(self.site))
        self.router.include_router(
            create_metrics_router(self.site, names=self.settings.metrics_names)
        )
        self.router.include_router(create_problems_router(self.site))
        self.router.include_router(create_queues_router(self.site))
        self.router.include_router(create_worker_router(self.site))

    def consumer_status(self) -> dict[str, Any] | None:
        if self.consumer is None:
            return None
        status = self.consumer.status.as_dict()
        if self.celery_events is not None:
            status["celery_events"] = self.celery_events.status.as_dict()
        return status

    def consumer_problem(self) -> tuple[str, str] | None:
        """What the consumer cannot do right now (``"store"``: write the store, ``"broker"``:
        read the stream) and why, if it cannot."""
        status = self.consumer.status if self.consumer is not None else None
        if status is None or status.connected or status.standby:
            return None
        return status.failing or "broker", status.last_error or ""

    def standby(self) -> str | None:
        """Why this server does not ingest while another process writes its database."""
        if self.consumer is None or not self.consumer.status.standby:
            return None
        return self.consumer.status.last_error

    @asynccontextmanager
    async def lifespan(self, app: FastAPI | None = None) -> AsyncIterator[None]:
        """Start the consumer (or watch the database) for the app's lifetime."""
        watcher: asyncio.Task[None] | None = None
        listener: Stoppable | None = None
        if self.consumer is not None:
            self.consumer.start()
            if self.celery_events is not None:
                self.celery_events.start()
        else:
            listener = self._listen()
            if listener is None:
                watcher = asyncio.create_task(self._watch_database())
        try:
            yield
        finally:
            if listener is not None:
                await asyncio.to_thread(listener.stop)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if self.celery_events is not None:
                await asyncio.to_thread(self.celery_events.stop)
            if self.consumer is not None:
                await asyncio.to_thread(self.consumer.stop)
            self.store.close()

    def _listen(self) -> Stoppable | None:
        """On PostgreSQL, hear the consumers' commits (``LISTEN``; see
        :mod:`stemtrace.store.pg.listen`) instead of watching for them; ``None`` elsewhere."""
        notify = self.broadcaster.notify
        return listen_for_changes(self.settings.db, lambda: notify(None))

    async def _watch_database(self, interval: float = 0.5) -> None:
        """With a separate consumer, notice its writes by the cursor it keeps."""
        last: object = None
        while True:
            reading = asyncio.ensure_future(asyncio.to_thread(self._last_write))
            try:
                now = await asyncio.shield(reading)
            except asyncio.CancelledError:
                # The read goes on in its thread: let it end before the lifespan closes
                # the store under it (a connection closed mid-query can crash SQLite).
                await asyncio.wait([reading])
                raise
            except Exception:  # the db is being created, locked for long, ...
                logger.debug("stemtrace: cannot watch the database", exc_info=True)
            else:
                if now != last and last is not None:
                    self.broadcaster.notify(None)
                last = now
            await asyncio.sleep(interval)

    def _last_write(self) -> object:
        return self.store.last_write()
