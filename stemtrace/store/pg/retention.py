"""Retention on PostgreSQL: whole days dropped by age, tasks deleted a slice at a time by count.

By age (``max_age``) retention forgets **whole UTC days**: the tasks written on a
day, their place in the rollups and their history go together once the day is
wholly older than the age (:func:`age_day`), each day in one transaction:

1. the days before it are closed to writers (:func:`~stemtrace.store.pg.days.close_days_before`):
   a late event for one of their tasks stores the task anew, today;
2. the day's tasks leave the per-name numbers and the flow and trace indexes, counted
   in SQL over the day's ``task_tally`` partition
   (:func:`~stemtrace.store.pg.rollup_writes.forget_day`); their planned ids, and the
   history rows later days hold of them (events that came after the day), are deleted
   (found by the day's range of rowids, which the day's tasks alone were given);
3. the day's ``tasks`` and ``task_tally`` partitions are dropped.

The history partitions of the same days are dropped too (a day's history holds
events of that day's tasks and of older ones). A task is kept from the age to the
age plus a day; so that what remains agrees with itself, the age's cutoff for the
rest is the start of the first day kept (:meth:`PgRetention.cutoff`): tasks first
seen before it but written later (a backlog ingested late) go a slice at a time,
the rollups' periods and the workers' gaps before it go too.

By count (``max_tasks``) the cutoff is SQLite's (the first-seen time of the
``max_tasks``-th newest task), and tasks past it go a slice per call with their
history rows, planned ids and their place in the rollups: a count does not fall on
a day's edge, so it deletes rows. The days it empties are dropped once a day. So
are tasks first seen more than a day ahead (stored by versions that took any time).

Several consumers may run retention on one database: one step runs at a time
(a transaction-level advisory lock, tried and not waited for), so no task is
taken out of the rollups twice.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from stemtrace.core.events import MAX_AHEAD
from stemtrace.store.pg import rollup_writes
from stemtrace.store.pg.days import (
    DAY,
    DROP_WAIT,
    LOCK_KEY,
    RETENTION_LOCK,
    close_days_before,
    days_of,
    drop_days_before,
    partition_name,
)

Conn = psycopg.Connection[tuple[Any, ...]]
logger = logging.getLogger("stemtrace")

_LOCK = f"SELECT pg_try_advisory_xact_lock({LOCK_KEY}, {RETENTION_LOCK})"


@dataclass
class PgRetention:
    max_age: float | None = None
    max_tasks: int | None = None
    slice_size: int = 2000
    interval: float = 5.0
    _next_run: float = 0.0
    _emptied_checked: int = -1

    def step(self, conn: Conn, now: float | None = None) -> int:
        """Drop the oldest days past the age, else forget one slice of tasks past the
        cutoff; how many tasks went."""
        now = time.time() if now is None else now
        if now < self._next_run:
            return 0
        if self.max_age is not None:
            first_kept = self.age_day(now)
            dropped = self._drop_days(conn, first_kept)
            # A day's history holds events of its own tasks and older ones: it goes once
            # those days' tasks went (not while a busy day of tasks waits for a later step).
            left = [day for day, _ in days_of(conn, "tasks")]
            drop_days_before(conn, min([first_kept, *left[:1]]), "history")
            if dropped is not None:
                return dropped
        found = self._slice(conn, now)
        if found < self.slice_size:
            self._drop_emptied(conn, now)
            self._next_run = now + self.interval
        return found

    def age_day(self, now: float) -> int:
        """The first day kept by age: days before it are wholly older than ``max_age``."""
        assert self.max_age is not None
        return int((now - self.max_age) // DAY)

    def cutoff(self, conn: Conn, now: float) -> float | None:
        """Tasks first seen before this go, in slices: the start of the first day kept by
        age, or just past the first-seen time of the ``max_tasks``-th newest task."""
        cutoffs: list[float] = []
        if self.max_age is not None:
            cutoffs.append(float(self.age_day(now) * DAY))
        if self.max_tasks is not None:
            row = conn.execute(
                "SELECT seen_at FROM tasks ORDER BY seen_at DESC, id DESC LIMIT 1 OFFSET %s",
                (self.max_tasks,),
            ).fetchone()
            if row is not None:
                cutoffs.append(math.nextafter(float(row[0]), math.inf))
        return max(cutoffs) if cutoffs else None

    def _drop_days(self, conn: Conn, first_kept: int) -> int | None:
        """Forget the oldest days of tasks before ``first_kept`` and drop their partitions,
        until a slice's worth of tasks went; how many, or ``None`` when no day was dropped
        (none is that old, or another step runs)."""
        old = [day for day, _ in days_of(conn, "tasks") if day < first_kept]
        if not old:
            return None
        close_days_before(conn, first_kept)
        dropped: int | None = None
        for day in old:
            try:
                count = self._drop_day(conn, day, first_kept)
            except psycopg.errors.LockNotAvailable:  # busy past DROP_WAIT: the next step
                logger.info("stemtrace: retention waits to drop day %s", day)
                break
            if count is None:
                break
            dropped = (dropped or 0) + count
            if dropped >= self.slice_size:
                break
        return dropped

    def _drop_day(self, conn: Conn, day: int, first_kept: int) -> int | None:
        with conn.transaction():
            locked = conn.execute(_LOCK).fetchone()
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (partition_name(day, "tasks"),)
            ).fetchone()
            if not (locked and locked[0] and exists and exists[0]):
                return None
            found = conn.execute(
                "SELECT count(*), min(rowid), max(rowid) FROM tasks WHERE day = %s", (day,)
            ).fetchone()
            assert found is not None
            count, low, high = found
            rollup_writes.forget_day(conn, day)
            if count:
                of_day = "task_rowid IN (SELECT rowid FROM tasks WHERE day = %s)"
                conn.execute(
                    f"DELETE FROM planned WHERE task_rowid BETWEEN %s AND %s AND {of_day}",
                    (low, high, day),
                )
                conn.execute(  # the events of the day's tasks that later days wrote
                    "DELETE FROM history WHERE written_at >= %s"
                    f" AND task_rowid BETWEEN %s AND %s AND {of_day}",
                    (first_kept * DAY, low, high, day),
                )
            conn.execute(f"SET LOCAL lock_timeout = '{DROP_WAIT}'")
            conn.execute(
                sql.SQL("DROP TABLE {}, {}").format(
                    sql.Identifier(partition_name(day, "tasks")),
                    sql.Identifier(partition_name(day, "task_tally")),
                )
            )
        return int(count)

    def _slice(self, conn: Conn, now: float) -> int:
        cutoff = self.cutoff(conn, now)
        with conn.transaction():
            locked = conn.execute(_LOCK).fetchone()
            if not (locked and locked[0]):
                return 0
            found = conn.execute(
                "SELECT rowid FROM tasks WHERE day >= (SELECT kept_from FROM tasks_day)"
                " AND (seen_at > %s OR seen_at < %s) ORDER BY seen_at LIMIT %s",
                (now + MAX_AHEAD, -math.inf if cutoff is None else cutoff, self.slice_size),
            ).fetchall()
            if found:
                rowids = [rowid for (rowid,) in found]
                rollup_writes.forget(conn, rowids)
                conn.execute("DELETE FROM history WHERE task_rowid = ANY(%s)", (rowids,))
                conn.execute("DELETE FROM planned WHERE task_rowid = ANY(%s)", (rowids,))
                conn.execute("DELETE FROM tasks WHERE rowid = ANY(%s)", (rowids,))
            if cutoff is not None:
                rollup_writes.prune(conn, cutoff)
                conn.execute('DELETE FROM worker_gaps WHERE "end" < %s', (cutoff,))
        return len(found)

    def _drop_emptied(self, conn: Conn, now: float) -> None:
        """Once a day: drop the partitions of past days that slices emptied: tasks of days
        before the one new tasks go into (no writer puts a task there, and none is left
        to update), history of days before yesterday (a writer's clock may lag)."""
        today = int(now // DAY)
        if today == self._emptied_checked:
            return
        self._emptied_checked = today
        row = conn.execute("SELECT day FROM tasks_day").fetchone()
        newest = int(row[0]) if row else 0
        try:
            self._drop_empty_days(conn, newest, today)
        except psycopg.errors.LockNotAvailable:
            self._emptied_checked = -1  # busy: tried again at the next step

    def _drop_empty_days(self, conn: Conn, newest: int, today: int) -> None:
        for day, name in days_of(conn, "tasks"):
            if day >= newest:
                break
            with conn.transaction():
                locked = conn.execute(_LOCK).fetchone()
                if not (locked and locked[0]):
                    return
                if conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                    sql.Identifier(name))).fetchone():  # fmt: skip
                    continue
                conn.execute(f"SET LOCAL lock_timeout = '{DROP_WAIT}'")
                conn.execute(
                    sql.SQL("DROP TABLE {}, {}").format(
                        sql.Identifier(name), sql.Identifier(partition_name(day, "task_tally"))
                    )
                )
        for day, name in days_of(conn, "history"):
            if day >= today - 1:
                break
            with conn.transaction():
                if conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                    sql.Identifier(name))).fetchone():  # fmt: skip
                    continue
                conn.execute(f"SET LOCAL lock_timeout = '{DROP_WAIT}'")
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
