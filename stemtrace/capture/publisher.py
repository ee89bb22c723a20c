"""Fire-and-forget publishing: a bounded in-process buffer drained by one thread.

:meth:`Publisher.publish` is what signal handlers call. It appends to a deque
and returns; it never does I/O, never blocks on a lock a sender holds, and
never raises. A daemon thread, started lazily in each process, batches the
buffer into frames and hands them to the transport. While the transport fails
the thread retries with backoff, the buffer fills to ``buffer_size`` and later
events are dropped and counted; one warning is logged per outage, and one
line when sending resumes.

Prefork workers fork after the parent may have published: the child starts
afresh (empty buffer, no thread, new connection) through ``os.register_at_fork``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from stemtrace.core.events import Event, encode_frame
from stemtrace.transports import Sender, describe_url

__all__ = ["Publisher", "describe_url"]

logger = logging.getLogger("stemtrace")

_MAX_BACKOFF = 5.0


class Publisher:
    """Buffers events and sends them in batches from a background thread."""

    def __init__(
        self,
        open_sender: Callable[[], Sender],
        *,
        buffer_size: int = 10_000,
        batch_size: int = 200,
        flush_interval: float = 0.2,
        describe: str = "the transport",
    ) -> None:
        self._open_sender = open_sender
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.describe = describe
        self.on_tick: Callable[[], None] | None = None
        """Called from the sending thread about every ``tick_interval`` seconds."""
        self.tick_interval = 10.0
        self.exit_timeout = 2.0
        """Most seconds spent flushing at interpreter exit."""
        self._reset()
        _live_publishers.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self.pid = self._pid
        """This process's id, kept here so that events need no system call."""
        # Event ids: this random prefix, then a decimal counter (all in C: next() is cheap).
        self._eids = map(os.urandom(8).hex().__add__, map(str, itertools.count()))
        self._buffer: deque[Event] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sender: Sender | None = None
        self._failing = False
        self._dropped_in_outage = 0
        self.sent = 0
        self.dropped = 0
        self.send_errors = 0

    # -- hot path ------------------------------------------------------------

    def next_eid(self) -> str:
        """A unique event id: random per process (and per fork), then a counter."""
        return next(self._eids)

    def publish(self, event: Event) -> None:
        """Queue one event; drop and count it when the buffer is full."""
        buffer = self._buffer
        if len(buffer) >= self.buffer_size:
            self.dropped += 1
            self._dropped_in_outage += 1
            return
        buffer.append(event)
        if self._thread is None:
            self._start()
        elif len(buffer) == self.batch_size:  # once per batch: the thread drains it all
            self._wake.set()

    # -- control -------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            thread = threading.Thread(target=self._run, name="stemtrace-publisher", daemon=True)
            self._thread = thread
            self._prepare_sender()
        thread.start()

    def _prepare_sender(self) -> None:
        """Build the sender in the publishing thread, once, before the sending thread runs.

        Building imports the transport's modules; done in the sending thread it
        may come while the interpreter exits (a script that sends tasks and
        ends), when an import that registers an ``atexit`` hook fails and every
        event is lost. Building opens no connection; the first send does.
        """
        try:
            self._sender = self._open_sender()
        except Exception:  # the sending thread tries again and reports it
            logger.debug("stemtrace: cannot prepare the sender yet", exc_info=True)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the buffer to be sent; True if it was."""
        deadline = time.monotonic() + timeout
        while self._buffer or not self._idle.is_set():
            if self._thread is None or not self._thread.is_alive():
                return not self._buffer
            self._wake.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._idle.is_set():  # the thread has not picked the batch up yet
                time.sleep(min(remaining, 0.005))
            else:
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float) -> None:
        """Flush for at most ``timeout`` seconds, then stop the thread."""
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.1))

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self._buffer),
            "sent": self.sent,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
        }

    # -- the sending thread --------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            sender, self._sender = self._sender, None
            if sender is not None:
                with contextlib.suppress(Exception):
                    sender.close()

    def _loop(self) -> None:
        backoff = self.flush_interval
        next_tick = time.monotonic() + self.tick_interval
        pending: list[Event] = []
        while True:
            self._wake.wait(self.flush_interval if not self._failing else backoff)
            self._wake.clear()
            if self.on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick_interval
                self._safe_tick()
            self._idle.clear()
            try:
                while pending or self._buffer:
                    if not pending:
                        pending = self._take(self.batch_size)
                    self._send(pending)
                    pending = []
                    if len(self._buffer) < self.batch_size and not self._stopping:
                        # Events that came in meanwhile wait for the next full batch or
                        # tick: sending them at once would make many small frames, and
                        # a frame costs about as much to send as 80 events cost to encode.
                        break
                backoff = self.flush_interval
            except Exception as exc:
                self._on_error(exc)
                backoff = min(max(backoff * 2, 0.5), _MAX_BACKOFF)
                if self._stopping:
                    self.dropped += len(pending) + len(self._buffer)
                    return
                continue
            finally:
                if not pending:
                    self._idle.set()
            if self._stopping:
                return

    def _take(self, count: int) -> list[Event]:
        # Only this thread takes from the buffer, so it holds at least len() events.
        popleft = self._buffer.popleft
        return [popleft() for _ in range(min(count, len(self._buffer)))]

    def _send(self, batch: list[Event]) -> None:
        try:
            frame = encode_frame(batch)
        except Exception:  # not the transport's fault: retrying would block every later event
            self.dropped += len(batch)
            logger.exception("stemtrace: dropped %d events that could not be encoded", len(batch))
            return
        if self._sender is None:
            self._sender = self._open_sender()
        self._sender.send([frame])
        self.sent += len(batch)
        if self._failing:
            self._failing = False
            logger.warning(
                "stemtrace: publishing to %s resumed; %d events were dropped meanwhile",
                self.describe,
                self._dropped_in_outage,
            )
        self._dropped_in_outage = 0

    def _on_error(self, exc: Exception) -> None:
        self.send_errors += 1
        sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(Exception):
                sender.close()
        if not self._failing:
            self._failing = True
            logger.warning(
                "stemtrace: cannot publish events to %s (%s: %s); tasks are unaffected, "
                "up to %d events are kept and later ones dropped until it is back",
                self.describe,
                type(exc).__name__,
                exc,
                self.buffer_size,
            )

    def _safe_tick(self) -> None:
        try:
            assert self.on_tick is not None
            self.on_tick()
        except Exception:
            logger.debug("stemtrace: tick failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        self._reset()


_live_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for publisher in list(_live_publishers):
        publisher._after_fork_in_child()


def _flush_all_at_exit() -> None:
    """A script that sends tasks and exits at once still delivers its events."""
    for publisher in list(_live_publishers):
        if publisher._buffer:
            publisher.flush(publisher.exit_timeout)


os.register_at_fork(after_in_child=_reset_all_after_fork)
atexit.register(_flush_all_at_exit)
