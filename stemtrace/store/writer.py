"""SQLite's writer: batches through :class:`~stemtrace.store.ingest.Ingestor`, upkeep between."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stemtrace.core.events import Event
from stemtrace.store import depths, queries, rollups
from stemtrace.store.ingest import Ingestor, IngestResult, is_transient
from stemtrace.store.retention import Retention
from stemtrace.store.search import SearchIndexer
from stemtrace.store.skipped import Skip
from stemtrace.store.surface import NO_UPKEEP, Upkeep


class SqliteWriter:
    """A :class:`stemtrace.store.surface.Writer` on one writing connection.

    Retention prunes a slice between batches; the search indexer (when
    ``upkeep.index``) indexes a slice once the consumer has caught up.
    """

    def __init__(self, conn: sqlite3.Connection, upkeep: Upkeep = NO_UPKEEP) -> None:
        self.conn = conn
        self.ingestor = Ingestor(conn)
        self.retention = (
            Retention(max_age=upkeep.max_age, max_tasks=upkeep.max_tasks)
            if upkeep.max_age is not None or upkeep.max_tasks is not None
            else None
        )
        self.indexer = SearchIndexer() if upkeep.index else None
        self.minutes_for = upkeep.minutes_for
        self._next_fold = 0.0

    def ingest(
        self,
        batch: Iterable[Event],
        cursor: tuple[str, str] | None = None,
        skipped: Sequence[Skip] = (),
    ) -> IngestResult:
        return self.ingestor.ingest(batch, cursor, skipped)

    def position(self, source: str) -> str | None:
        return queries.cursor_position(self.conn, source)

    def upkeep(self, *, caught_up: bool) -> tuple[int, bool]:
        pruned = self.retention.step(self.conn) if self.retention is not None else 0
        self.fold()
        if self.indexer is None or not caught_up:
            return pruned, False
        indexed = self.indexer.step(self.conn)
        return pruned, indexed >= self.indexer.slice_size

    def fold(self, now: float | None = None) -> None:
        """Fold the rollups' old minutes into hours, once a minute."""
        now = time.time() if now is None else now
        if now < self._next_fold:
            return
        self._next_fold = now + 60.0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            rollups.fold(self.conn, now - self.minutes_for)
            depths.prune(self.conn, now - self.minutes_for)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def record_depths(
        self, samples: Mapping[str, tuple[int | None, int | None, str | None]], at: float
    ) -> None:
        """The broker's counts of its queues, read at ``at``, in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            depths.record(self.conn, samples, at)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    @property
    def search_status(self) -> dict[str, Any] | None:
        return self.indexer.status if self.indexer is not None else None
