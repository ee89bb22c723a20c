"""PostgreSQL's day partitions (:mod:`~stemtrace.store.pg.schema` says which tables, and why).

A day's partitions are made before its first batch (:func:`ensure_day`, ahead of
midnight for the next day); the day new tasks go into moves on under the writers'
lock (:func:`roll_day`); retention closes old days to writers
(:func:`close_days_before`) and drops them (:func:`drop_days_before`,
:mod:`~stemtrace.store.pg.retention`).
"""

from __future__ import annotations

import calendar
import time

import psycopg
from psycopg import sql

from stemtrace.store.pg import search

Conn = psycopg.Connection[tuple[object, ...]]

DAY = 86400
LOCK_KEY = 0x5374656D
""""Stem": stemtrace's advisory locks. Alone (a bigint), the migrations'; with an int beside
it, a day's partitions being made (the day), ``tasks_day`` (:data:`DAY_LOCK`), retention
(:data:`RETENTION_LOCK`)."""
DAILY = ("history", "tasks", "task_tally")
"""The tables partitioned by day: ``history`` by ``written_at`` (seconds), the others by
``day`` (days since the epoch)."""
DAY_LOCK = -1
"""With :data:`LOCK_KEY`, the advisory lock on ``tasks_day``: shared by every batch
that writes tasks, taken alone to move the day on or close old days."""
RETENTION_LOCK = -2
"""With :data:`LOCK_KEY`: held by the one retention step that runs at a time."""


def partition_name(day: int, table: str = "history") -> str:
    """The partition of ``table`` for day ``day`` (days since the epoch, UTC)."""
    return f"{table}_d{time.strftime('%Y%m%d', time.gmtime(day * DAY))}"


def make_partitions(conn: Conn, day: int, tables: tuple[str, ...] = DAILY) -> None:
    """Make the partitions of ``day`` of ``tables`` unless they exist (in the caller's
    transaction, unlocked: :func:`ensure_day` is for writers). A ``tasks`` partition gets
    :func:`stemtrace.store.pg.search.statistics` of its own (the planner reads each
    partition's; those of the partitioned table are not made on its partitions)."""
    for table in tables:
        low, high = (day * DAY, (day + 1) * DAY) if table == "history" else (day, day + 1)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier(partition_name(day, table)),
                sql.Identifier(table),
                sql.Literal(float(low) if table == "history" else low),
                sql.Literal(float(high) if table == "history" else high),
            )
        )
        if table == "tasks" and conn.info.server_version >= 140000:  # as m004 makes them
            for statement in search.statistics(partition_name(day, table)):
                conn.execute(statement)


def ensure_day(conn: Conn, day: int) -> None:
    """Make the partitions of ``day`` (history, tasks, task_tally) unless they exist
    (its own transaction).

    Writers that start a day at once serialise on an advisory lock instead of
    failing on the second ``CREATE``.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (LOCK_KEY, day))
        make_partitions(conn, day)


def roll_day(conn: Conn, day: int) -> bool:
    """Move ``tasks_day`` on to ``day`` (its partitions made first) unless it is there
    or past it; whether it moved. Waits for the batches in flight: none of them is
    writing new tasks into the day before once it has moved."""
    found = conn.execute("SELECT day FROM tasks_day").fetchone()
    if found is not None and int(str(found[0])) >= day:
        return False
    ensure_day(conn, day)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (LOCK_KEY, DAY_LOCK))
        moved = conn.execute("UPDATE tasks_day SET day = %s WHERE day < %s", (day, day))
    return moved.rowcount > 0


def close_days_before(conn: Conn, day: int) -> None:
    """Let writers no longer write into the days before ``day`` (retention is about to
    forget them): a late event for a task of such a day stores it anew, today. Waits for
    the batches in flight, so no batch writes into those days after this returns."""
    found = conn.execute("SELECT kept_from FROM tasks_day").fetchone()
    if found is not None and int(str(found[0])) >= day:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (LOCK_KEY, DAY_LOCK))
        conn.execute("UPDATE tasks_day SET kept_from = %s WHERE kept_from < %s", (day, day))


def days_of(conn: Conn, table: str) -> list[tuple[int, str]]:
    """``(day, partition)`` of every partition of ``table``, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid"
        " JOIN pg_class AS p ON p.oid = i.inhparent"
        " WHERE p.relname = %s AND p.relnamespace = to_regnamespace(current_schema())",
        (table,),
    ).fetchall()
    found = []
    for (name,) in rows:
        stamp = str(name).removeprefix(f"{table}_d")
        try:
            start = calendar.timegm(time.strptime(stamp, "%Y%m%d"))
        except ValueError:
            continue
        found.append((start // DAY, str(name)))
    return sorted(found)


def history_days(conn: Conn) -> list[tuple[int, str]]:
    """``(day, partition)`` of every history partition, oldest first."""
    return days_of(conn, "history")


def drop_days_before(conn: Conn, day: int, table: str = "history") -> int:
    """Drop the partitions of ``table`` of days before ``day``: how many (each in its own
    transaction, waiting at most :data:`DROP_WAIT` for the readers of the table; the first
    that cannot have it stops the rest)."""
    dropped = 0
    for found, name in days_of(conn, table):
        if found >= day:
            break
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{DROP_WAIT}'")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.LockNotAvailable:
            break  # busy: the next step tries again
        dropped += 1
    return dropped


DROP_WAIT = "2s"
"""How long dropping a partition waits for the table's readers and writers (it takes the
table's exclusive lock, which queues every later reader behind it): past that, it fails,
and retention tries again at its next step."""
