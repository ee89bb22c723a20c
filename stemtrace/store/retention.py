"""Retention: forget tasks older than an age, or beyond a count, a slice at a time."""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass

from stemtrace.core import jsonio
from stemtrace.core.events import MAX_AHEAD
from stemtrace.store import fleet_writes, rollups, search


@dataclass
class Retention:
    """Prunes the oldest tasks (by first-seen time), their event history and search documents,
    and the workers' heartbeat gaps that ended before the same cutoff.

    Tasks first seen more than :data:`~stemtrace.core.events.MAX_AHEAD` in the
    future (stored by versions that took any time) go too, retention or not.

    ``step`` deletes at most ``slice_size`` tasks per call and only every
    ``interval`` seconds, so the writer thread that calls it between batches
    is never held for long.
    """

    max_age: float | None = None
    """Seconds a task is kept after it was first seen; ``None`` keeps forever."""
    max_tasks: int | None = None
    """Most tasks kept; ``None`` for no limit."""
    slice_size: int = 2000
    interval: float = 5.0
    _next_run: float = 0.0

    def step(self, conn: sqlite3.Connection, now: float | None = None) -> int:
        now = time.time() if now is None else now
        if now < self._next_run:
            return 0
        # Rows first seen after tomorrow came from versions that took any time
        # (the decoder now refuses them): they would never age out.
        found = conn.execute(
            "SELECT id, rowid FROM tasks WHERE seen_at > ? LIMIT ?",
            (now + MAX_AHEAD, self.slice_size),
        ).fetchall()
        cutoff = self._cutoff(conn, now) if len(found) < self.slice_size else None
        if cutoff is not None:
            found += conn.execute(
                "SELECT id, rowid FROM tasks WHERE seen_at < ? ORDER BY seen_at LIMIT ?",
                (cutoff, self.slice_size - len(found)),
            ).fetchall()
        if not found:
            if cutoff is not None:
                fleet_writes.prune_gaps(conn, cutoff)  # one statement: its own transaction
            self._next_run = now + self.interval
            return 0
        ids = [task_id for task_id, _ in found]
        marks = ",".join("?" for _ in ids)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rowids = [rowid for _, rowid in found]
            rollups.forget(conn, rowids, jsonio.dumps)
            conn.execute(f"DELETE FROM history WHERE task_rowid IN ({marks})", rowids)
            search.forget(conn, [rowid for _, rowid in found])
            conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", ids)
            search.forgotten(conn)
            if cutoff is not None:
                rollups.prune(conn, cutoff)
                fleet_writes.prune_gaps(conn, cutoff)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if len(ids) < self.slice_size:
            self._next_run = now + self.interval
        return len(ids)

    def _cutoff(self, conn: sqlite3.Connection, now: float) -> float | None:
        cutoffs: list[float] = []
        if self.max_age is not None:
            cutoffs.append(now - self.max_age)
        if self.max_tasks is not None:
            row = conn.execute(
                "SELECT seen_at FROM tasks ORDER BY seen_at DESC, id DESC LIMIT 1 OFFSET ?",
                (self.max_tasks,),
            ).fetchone()
            if row is not None:
                cutoffs.append(math.nextafter(float(row[0]), math.inf))  # just past it
        return max(cutoffs) if cutoffs else None
