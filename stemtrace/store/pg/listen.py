"""Live updates across servers: PostgreSQL's ``LISTEN``/``NOTIFY``.

Each batch a writer commits sends a notification on :data:`CHANNEL`
(:class:`~stemtrace.store.pg.writer.PgWriter`), in the batch's transaction: PostgreSQL
delivers it at commit, and never for a batch rolled back. Its payload is how many
tasks and workers the batch touched (:func:`payload`), never task data: a few bytes,
far under PostgreSQL's 8000. PostgreSQL notifies the listeners of the database
written only, so stores sharing a server hear only their own batches.

A :class:`Listener` is a thread on a connection of its own (``LISTEN`` belongs to a
session, so not the pool's), calling back for each notification, so that a server
which runs no consumer still learns that something changed. When the connection is
lost (PostgreSQL restarted, the backend terminated) it connects again, waiting longer
each time up to a limit, and says it may have missed some (:attr:`Change.resumed`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

logger = logging.getLogger("stemtrace")

CHANNEL = "stemtrace_changes"
"""The channel every writer notifies and every listener listens to."""
APPLICATION_NAME = "stemtrace-listen"
"""How a listener's connection shows in ``pg_stat_activity``."""


@dataclass(frozen=True)
class Change:
    """What one committed batch touched, or that notifications may have been missed."""

    tasks: int = 0
    workers: int = 0
    resumed: bool = False
    """Heard again after a lost connection: batches committed meanwhile were not heard."""


def payload(tasks: int, workers: int) -> str:
    """A notification's text: counts only (``{"tasks":2,"workers":1}``)."""
    return json.dumps({"tasks": tasks, "workers": workers}, separators=(",", ":"))


def parse(text: str) -> Change:
    """A notification's :class:`Change`; one another version sent still means a change."""
    try:
        found = json.loads(text)
        return Change(int(found["tasks"]), int(found["workers"]))
    except (ValueError, TypeError, KeyError):
        return Change()


class Listener:
    """A thread that calls ``callback`` for each notification on ``channel``, until
    :meth:`stop`. The callback runs on this thread; an exception it raises is logged."""

    def __init__(
        self,
        url: str,
        callback: Callable[[Change], object],
        *,
        channel: str = CHANNEL,
        poll: float = 0.5,
        backoff: tuple[float, float] = (0.2, 10.0),
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.callback = callback
        self.channel = channel
        self.poll = poll
        """Seconds between looks at :meth:`stop` while waiting for notifications."""
        self.backoff = backoff
        """Seconds to wait before connecting again: the first, doubled up to the second."""
        self.connect_timeout = connect_timeout
        self.listening = threading.Event()
        """Set while the connection listens (for a server's health, and for the tests)."""
        self.backend_pid: int | None = None
        """The listening connection's server process, while it listens."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stemtrace-listen", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop listening and end the thread (within ``poll`` seconds, or a connection
        attempt's time-out)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay, lost = self.backoff[0], False
        while not self._stop.is_set():
            try:
                self._listen(resumed=lost)
                delay = self.backoff[0]
            except psycopg.Error as exc:
                if self.listening.is_set() or not lost:
                    logger.warning("stemtrace: listening for changes failed: %s", exc)
                if self.listening.is_set():
                    delay = self.backoff[0]
            finally:
                self.listening.clear()
                self.backend_pid = None
            lost = True
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])

    def _listen(self, *, resumed: bool) -> None:
        with psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name=APPLICATION_NAME,
        ) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.backend_pid = conn.info.backend_pid
            self.listening.set()
            if resumed:
                self._call(Change(resumed=True))
            while not self._stop.is_set():
                for notification in conn.notifies(timeout=self.poll):
                    self._call(parse(notification.payload))

    def _call(self, change: Change) -> None:
        try:
            self.callback(change)
        except Exception:
            logger.exception("stemtrace: a change listener failed")
