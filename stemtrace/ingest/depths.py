"""The consumer's look at the broker's queues, every few seconds, between batches.

The consumer thread owns the store's writer, so the poll runs there: each
``every`` seconds it reads the queues the store knows of
(:meth:`stemtrace.store.Backend.known_queues`) through a
:class:`stemtrace.transports.depths.DepthReader` and records what it read.
Nothing here may stop ingestion: a broker that cannot be read is recorded
as an error per queue, the reader is closed and opened afresh on the next
interval (when every queue failed: one refused queue is that queue's error
only), and any other failure is logged and skipped. The readers' sockets
time out within two seconds, so a poll costs the stream at most that.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from stemtrace.store import Backend, Writer
from stemtrace.transports.depths import QUEUE_ERRORS, Depth, DepthReader

logger = logging.getLogger("stemtrace")

MAX_QUEUES = 500
"""Queues read per poll at most (names come from tasks too: a flood of them must not turn
each poll into a flood of requests); workers' and task definitions' queues come first."""


class DepthPoller:
    """Reads and records the known queues' depths at most once per ``every`` seconds."""

    def __init__(
        self,
        store: Backend,
        open_reader: Callable[[], DepthReader | None],
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._open_reader = open_reader
        self.every = every
        self.clock = clock
        self.reader: DepthReader | None = None
        self.round_trips = 0
        """Requests sent to the broker by every reader this poller opened."""
        self.polls = 0
        self._next = 0.0
        self._failing = False

    def maybe_poll(self, writer: Writer) -> dict[str, Depth] | None:
        """Poll when due; what was read, or ``None`` (not due, nothing known, or failed)."""
        now = self.clock()
        if now < self._next:
            return None
        self._next = now + self.every
        try:
            return self.poll(writer)
        except Exception as exc:  # the store or a reader's bug: never ingestion's problem
            self._drop_reader()
            if not self._failing:
                logger.warning("stemtrace: cannot poll the queues (%s: %s)",
                               type(exc).__name__, str(exc)[:200])  # fmt: skip
            self._failing = True
            return None

    def poll(self, writer: Writer) -> dict[str, Depth] | None:
        """Read every known queue now and record it."""
        queues = self.store.known_queues()[:MAX_QUEUES]
        if not queues:
            return None
        if self.reader is None:
            self.reader = self._open_reader()
            if self.reader is None:
                return None
        before = self.reader.round_trips
        depths = self.reader.read(queues)
        self.round_trips += self.reader.round_trips - before
        self.polls += 1
        writer.record_depths(
            {q: (d.messages, d.consumers, d.error) for q, d in depths.items()}, time.time()
        )
        broken = [d.error for d in depths.values() if d.error and d.error not in QUEUE_ERRORS]
        down = bool(broken) and len(broken) == len(depths)  # the broker, not one queue
        if down:  # start afresh on the next interval
            self._drop_reader()
            if not self._failing:
                logger.warning("stemtrace: cannot read the queues' lengths (%s)", broken[0])
        elif self._failing:
            logger.warning("stemtrace: reading the queues' lengths again")
        self._failing = down
        return depths

    def _drop_reader(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
            self.reader = None

    def close(self) -> None:
        self._drop_reader()
