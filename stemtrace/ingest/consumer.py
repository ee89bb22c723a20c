"""The consumer: transport -> store, from a cursor kept in the database.

One thread reads frames, decodes and validates them, and writes each batch
together with the cursor that covers it in one transaction: a restarted
consumer resumes exactly where it stopped, and several servers can each read
the whole stream into their own store. In a consumer group (``--group``) the
group keeps the position instead: the reader ignores the cursor, which is then
written for ``/status`` only (under a source of its own, so it never mixes
with a cursor that is one), and acknowledges a batch's entries after it is
committed. Malformed frames and events are skipped and counted in the same
transaction as the batch (by reason, with the last raw samples: ``/status``
and ``/api/health`` show them). An event that cannot be stored costs that
event only: the batch is written again one event at a time and the bad one
skipped; a failure of the database itself (locked, disk full) leaves the
cursor where it was and the batch is read again. When the broker cannot be
reached the consumer says so once, reports it in its status and keeps
retrying. Retention pruning runs in the same thread, between batches, a
bounded slice at a time, so it never stalls ingestion for long. The search
indexer too, but only once a read came back short (the consumer has caught
up): in a burst ingestion goes first and indexing catches up after.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from stemtrace.core.events import Event, FrameError, decode_frame
from stemtrace.ingest.depths import DepthPoller
from stemtrace.settings import Settings
from stemtrace.store import NO_UPKEEP, Backend, IngestResult, Skip, Upkeep, Writer, is_unavailable
from stemtrace.transports import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    Reader,
    describe_url,
    open_reader,
    scheme_of,
)
from stemtrace.transports.depths import open_depth_reader

CELERY_EVENT_SCHEMES = REDIS_SCHEMES | AMQP_SCHEMES

logger = logging.getLogger("stemtrace")

Listener = Callable[[AbstractSet[str], AbstractSet[str]], None]
"""Called after each written batch with the task ids and worker names it touched."""


@dataclass
class ConsumerStatus:
    source: str
    connected: bool = False
    last_error: str | None = None
    ingested: int = 0
    skipped: int = 0
    batches: int = 0
    lag_seconds: float | None = None
    last_batch_at: float | None = None
    position: str | None = None
    backlog: int | None = None
    pruned: int = 0
    search: dict[str, Any] | None = None
    skip_reasons: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    standby: bool = False
    """Another process writes the database: this one waits to take over."""
    group: dict[str, Any] | None = None
    """In a consumer group: its name, this consumer's, and what the broker says of it."""
    failing: str | None = None
    """While not connected: ``"store"`` when writing the store fails, ``"broker"`` when
    reading the stream does (``last_error`` says how)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "connected": self.connected,
            "last_error": self.last_error,
            "failing": self.failing,
            "ingested": self.ingested,
            "skipped": self.skipped,
            "batches": self.batches,
            "lag_seconds": self.lag_seconds,
            "last_batch_at": self.last_batch_at,
            "position": self.position,
            "backlog": self.backlog,
            "pruned": self.pruned,
            "search": self.search,
            "recent_skip_reasons": list(self.skip_reasons),
            "standby": self.standby,
            "group": self.group,
        }


class Consumer:
    """Moves events from one reader into one store; run it with :meth:`start`."""

    def __init__(
        self,
        store: Backend,
        open_reader: Callable[[], Reader],
        *,
        source: str,
        upkeep: Upkeep = NO_UPKEEP,
        separate: bool = False,
        batch_frames: int = 100,
        block: float = 0.5,
        poller: DepthPoller | None = None,
    ) -> None:
        """``upkeep``: the retention and indexing its writer does between batches;
        ``separate``: a writing connection of its own (a second consumer);
        ``poller``: reads the broker's queue lengths between batches."""
        self.store = store
        self.upkeep = upkeep
        self.separate = separate
        self._open_reader = open_reader
        self.batch_frames = batch_frames
        self.block = block
        self.status = ConsumerStatus(source=source)
        self.listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_backlog = 0.0
        self.poller = poller
        self._failing: str | None = None
        """What fails and is retried (``read`` the broker, ``write`` the store), said once."""

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="stemtrace-consumer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Consume until :meth:`stop`; never raises."""
        if not self._wait_for_claim():
            return
        writer = self.open_writer()
        position: str | None = None
        resumed = False  # the cursor read back (the store may be out of reach at first)
        reader: Reader | None = None
        backoff = 0.5
        more_to_index = False
        while not self._stop.is_set():
            try:
                if not resumed:
                    position = self.status.position = writer.position(self.status.source)
                    resumed = True
                if reader is None:
                    reader = self._open_reader()
                # With indexing left to do, only look for new entries, do not wait for them.
                block = 0.0 if more_to_index else self.block
                entries = reader.read(position, self.batch_frames, block)
                backoff = 0.5
                if entries:
                    position = self._write(writer, entries)
                    reader.commit(position)
                self._report(reader, position)
                more_to_index = self._between_batches(
                    writer, caught_up=len(entries) < self.batch_frames
                )
                self._working()
            except Exception as exc:
                self._on_error(exc)
                if reader is not None:
                    try:
                        reader.close()
                    finally:
                        reader = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            if self.poller is not None:
                self.poller.maybe_poll(writer)  # never raises
        if reader is not None:
            reader.close()
        if self.poller is not None:
            self.poller.close()

    def open_writer(self) -> Writer:
        """The store's writer this consumer writes through (tests replace it)."""
        return self.store.open_writer(self.upkeep, separate=self.separate)

    # -- internals -------------------------------------------------------------

    def _working(self) -> None:
        """A round went through: the broker was read, and the store written if need be."""
        if not self.status.connected:
            if self._failing is not None:
                logger.warning("stemtrace: can %s again", self._failing)
            self.status.connected = True
            self.status.last_error = None
            self.status.failing = None
            self._failing = None

    def _report(self, reader: Reader, position: str | None) -> None:
        self.status.lag_seconds = reader.lag(position)
        group_status = getattr(reader, "group_status", None)
        if group_status is not None:
            self.status.group = group_status()
        backlog = getattr(reader, "backlog", None)
        if backlog is not None and time.monotonic() >= self._next_backlog:
            self._next_backlog = time.monotonic() + 2.0
            self.status.backlog = backlog()

    def _between_batches(self, writer: Writer, *, caught_up: bool) -> bool:
        """Retention, then (once caught up) indexing; whether indexing has more to do."""
        pruned, more = writer.upkeep(caught_up=caught_up)
        self.status.pruned += pruned
        if writer.search_status is not None:
            self.status.search = writer.search_status
        return more

    def _wait_for_claim(self) -> bool:
        """Stand by while another process writes the database; False when stopped first."""
        while (holder := self.store.claim_writer()) is not None:
            if not self.status.standby:
                self.status.standby = True
                self.status.last_error = (
                    f"standby: {holder} already writes {self.store.path}; one writer per"
                    " SQLite file, so this server serves pages and takes over when that one stops"
                )
                logger.warning("stemtrace: %s", self.status.last_error)
            if self._stop.wait(2.0):
                return False
        if self.status.standby:
            logger.warning("stemtrace: now the writer of %s", self.store.path)
            self.status.standby = False
            self.status.last_error = None
        return True

    def _write(self, writer: Writer, entries: list[tuple[str, bytes]]) -> str:
        batch: list[Event] = []
        skipped: list[Skip] = []
        now = time.time()
        for entry_id, frame in entries:
            try:
                decoded = decode_frame(frame, now)
            except FrameError as exc:
                skipped.append(Skip(str(exc), f"entry {entry_id}", frame))
                continue
            except Exception as exc:  # a decoder bug must not stall the stream on one entry
                logger.exception("stemtrace: cannot decode entry %s", entry_id)
                reason = f"cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})"
                skipped.append(Skip(reason, f"entry {entry_id}", frame))
                continue
            batch.extend(decoded.events)
            skipped.extend(
                Skip(reason, f"entry {entry_id} event {index}", sample)
                for index, reason, sample in decoded.rejected
            )
        position = entries[-1][0]
        cursor = (self.status.source, position)
        try:
            result = writer.ingest(batch, cursor, skipped)
        except Exception as exc:
            if writer.is_transient(exc):
                raise  # the database's fault, not the events': read the batch again later
            logger.warning(
                "stemtrace: a batch cannot be stored (%s: %s); storing its events one by one",
                type(exc).__name__, str(exc)[:200],
            )  # fmt: skip
            result, batch = self._write_one_by_one(writer, batch, cursor, skipped)
        self._count(skipped)
        self.status.ingested += len(batch)
        self.status.batches += 1
        self.status.position = position
        self.status.last_batch_at = time.time()
        if self.listeners and batch:
            for listener in list(self.listeners):
                try:
                    listener(result.task_ids, result.workers)
                except Exception:
                    logger.exception("stemtrace: a consumer listener failed")
        return position

    def _write_one_by_one(
        self,
        writer: Writer,
        batch: list[Event],
        cursor: tuple[str, str],
        skipped: list[Skip],
    ) -> tuple[IngestResult, list[Event]]:
        """Each event on its own: one that cannot be stored costs itself only."""
        kept = []
        task_ids: set[str] = set()
        workers: set[str] = set()
        for event in batch:
            try:
                one = writer.ingest([event])
            except Exception as exc:
                if writer.is_transient(exc):
                    raise
                reason = f"cannot be stored ({type(exc).__name__}: {str(exc)[:200]})"
                skipped.append(Skip(reason, f"event {str(event.get('eid'))[:80]}", event))
                continue
            kept.append(event)
            task_ids |= one.task_ids
            workers |= one.workers
        writer.ingest([], cursor, skipped)
        return IngestResult(task_ids=task_ids, workers=workers), kept

    def _count(self, skipped: list[Skip]) -> None:
        for skip in skipped:
            self.status.skipped += 1
            self.status.skip_reasons.append(f"{skip.where}: {skip.reason}"[:500])
            if self.status.skipped == 1:
                logger.warning(
                    "stemtrace: skipping malformed input (%s: %s); later ones are counted"
                    " (see /status)", skip.where, skip.reason,
                )  # fmt: skip

    def _on_error(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        store = is_unavailable(exc)  # the store's fault, not the broker's
        what = f"write {self.store.path}" if store else f"read {self.status.source}"
        if what != self._failing:  # said once, until it works again
            logger.warning("stemtrace: cannot %s (%s); retrying in the background", what, message)
        self._failing = what
        self.status.failing = "store" if store else "broker"
        self.status.connected = False
        self.status.last_error = message


def source_name(settings: Settings) -> str:
    """The cursor key of one stream: the broker URL (without password) and the stream key,
    and the group's name in group mode (there the row is status, not a position)."""
    found = f"{describe_url(settings.broker)}#{settings.stream}"
    return found if settings.group is None else f"{found}@group:{settings.group}"


def build_consumer(
    settings: Settings, store: Backend, *, consumer_name: str | None = None, poll: bool = True
) -> Consumer:
    """The consumer ``stemtrace run`` and ``stemtrace consume`` use; it also polls the
    broker's queue lengths every ``queue_poll_seconds`` (Redis and RabbitMQ, or the
    ``queue_broker`` when set: a ``memory://`` events stream is no Celery broker) unless
    ``poll`` is off (the other consumers of a ``--consumers N``). ``consumer_name``: its
    name in ``settings.group`` (default: the settings')."""
    poller = None
    name = consumer_name or settings.consumer_id
    broker = settings.queue_broker
    if broker is None and scheme_of(settings.broker) in CELERY_EVENT_SCHEMES:
        broker = settings.broker
    if poll and settings.queue_poll_seconds > 0 and broker is not None:
        url = broker
        poller = DepthPoller(store, lambda: open_depth_reader(url), settings.queue_poll_seconds)
    return Consumer(
        store,
        lambda: open_reader(
            settings.broker,
            stream=settings.stream,
            queue=settings.queue_name,
            group=settings.group,
            consumer=name,
            claim_idle=settings.claim_idle_seconds,
        ),
        source=source_name(settings),
        upkeep=Upkeep(
            max_age=settings.retention_seconds,
            max_tasks=settings.task_limit,
            index=True,
            minutes_for=settings.rollup_minutes_days * 86400,
        ),
        poller=poller,
    )


def build_celery_events_consumer(settings: Settings, store: Backend) -> Consumer | None:
    """A second consumer for Celery's own events (workers without ``init(app)``).

    It indexes nothing: the main consumer's indexer covers the whole store.
    """
    if not settings.celery_events or scheme_of(settings.broker) not in CELERY_EVENT_SCHEMES:
        return None
    from stemtrace.transports.celery_events import CeleryEventsReader

    return Consumer(
        store,
        lambda: CeleryEventsReader(settings.broker),
        source=f"celery-events:{describe_url(settings.broker)}",
        separate=True,
    )
