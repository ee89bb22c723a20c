"""Live updates: who changed, told to every open page over Server-Sent Events.

The consumer calls :meth:`Broadcaster.notify` from its writer thread after
each batch with the task ids it touched (``None`` when a separate consumer
process wrote and only "something changed" is known). Each SSE client has a
small queue; notifications are coalesced per client, so a slow browser never
holds the writer back and never grows memory. Messages carry only an event
name, never task data: the page fetches what it shows through its normal,
escaped, authorised routes. ``ready`` opens every connection (and every
reconnection), so a page refreshes once for whatever it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


@dataclass(eq=False)
class Subscriber:
    """One open page: which tasks it cares about (``None``: any change)."""

    task_ids: frozenset[str] | None
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, changed: AbstractSet[str] | None) -> bool:
        return self.task_ids is None or changed is None or not self.task_ids.isdisjoint(changed)


class Broadcaster:
    """Fans change notifications out to SSE subscribers, thread-safely."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._subscribers)

    def notify(
        self, task_ids: AbstractSet[str] | None, workers: AbstractSet[str] | None = None
    ) -> None:
        """Called from any thread after data changed."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            if subscriber.wants(task_ids) or (workers and subscriber.task_ids is None):
                with contextlib.suppress(RuntimeError):  # its loop is closed: it is leaving
                    subscriber.loop.call_soon_threadsafe(subscriber.wake.set)

    async def events(
        self,
        task_ids: frozenset[str] | None,
        *,
        is_disconnected: Callable[[], object],
        min_interval: float = 0.25,
        keepalive: float = 15.0,
    ) -> AsyncIterator[dict[str, str]]:
        """SSE messages for one client: ``changed`` at most every ``min_interval`` s."""
        subscriber = Subscriber(task_ids, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscriber)
        try:
            yield {"event": "ready", "data": ""}
            while True:
                try:
                    await asyncio.wait_for(subscriber.wake.wait(), keepalive)
                except TimeoutError:
                    if await _maybe_await(is_disconnected()):
                        return
                    yield {"event": "ping", "data": ""}
                    continue
                subscriber.wake.clear()
                yield {"event": "changed", "data": ""}
                await asyncio.sleep(min_interval)  # coalesce bursts into one refresh
        finally:
            with self._lock:
                self._subscribers.discard(subscriber)


async def _maybe_await(value: object) -> object:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def merged(*streams: AsyncIterator[dict[str, str]]) -> AsyncIterator[dict[str, str]]:
    """The messages of ``streams`` as they come, on one connection; ends when one ends."""
    queue: asyncio.Queue[dict[str, str] | None] = asyncio.Queue(maxsize=16)

    async def pump(stream: AsyncIterator[dict[str, str]]) -> None:
        try:
            async for message in stream:
                await queue.put(message)
        finally:
            closing = getattr(stream, "aclose", None)  # its own finally runs now, not at gc
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing()
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        while (message := await queue.get()) is not None:
            yield message
    finally:
        for task in tasks:
            task.cancel()
