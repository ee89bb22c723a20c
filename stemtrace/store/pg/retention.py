"""Retention on PostgreSQL: whole days of history dropped, tasks deleted a slice at a time.

The cutoff is SQLite's (:class:`stemtrace.store.retention.Retention`): an age,
or the first-seen time of the ``max_tasks``-th newest task. Tasks past it go a
slice per call with their history rows, planned ids and their place in the
rollups (per-name numbers, flow and trace indexes; the periods past the cutoff
go too, as SQLite's); then every history partition of a day wholly before the
age's cutoff is dropped at once (its rows are those of tasks gone already, or
about to go).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from stemtrace.core.events import MAX_AHEAD
from stemtrace.store.pg import rollup_writes
from stemtrace.store.pg.schema import DAY, drop_days_before

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class PgRetention:
    max_age: float | None = None
    max_tasks: int | None = None
    slice_size: int = 2000
    interval: float = 5.0
    _next_run: float = 0.0

    def step(self, conn: Conn, now: float | None = None) -> int:
        """Forget one slice of tasks past the cutoff; how many."""
        now = time.time() if now is None else now
        if now < self._next_run:
            return 0
        cutoff = self._cutoff(conn, now)
        with conn.transaction():
            found = conn.execute(
                "SELECT id, rowid FROM tasks WHERE seen_at > %s OR seen_at < %s"
                " ORDER BY seen_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (now + MAX_AHEAD, -math.inf if cutoff is None else cutoff, self.slice_size),
            ).fetchall()
            if found:
                rowids = [rowid for _, rowid in found]
                rollup_writes.forget(conn, rowids)
                conn.execute("DELETE FROM history WHERE task_rowid = ANY(%s)", (rowids,))
                conn.execute("DELETE FROM planned WHERE task_rowid = ANY(%s)", (rowids,))
                conn.execute("DELETE FROM tasks WHERE rowid = ANY(%s)", (rowids,))
            if cutoff is not None:
                rollup_writes.prune(conn, cutoff)
                conn.execute('DELETE FROM worker_gaps WHERE "end" < %s', (cutoff,))
        if self.max_age is not None:
            drop_days_before(conn, int((now - self.max_age) // DAY))
        if len(found) < self.slice_size:
            self._next_run = now + self.interval
        return len(found)

    def _cutoff(self, conn: Conn, now: float) -> float | None:
        cutoffs: list[float] = []
        if self.max_age is not None:
            cutoffs.append(now - self.max_age)
        if self.max_tasks is not None:
            row = conn.execute(
                "SELECT seen_at FROM tasks ORDER BY seen_at DESC, id DESC LIMIT 1 OFFSET %s",
                (self.max_tasks,),
            ).fetchone()
            if row is not None:
                cutoffs.append(math.nextafter(float(row[0]), math.inf))
        return max(cutoffs) if cutoffs else None
