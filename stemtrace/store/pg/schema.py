"""PostgreSQL's schema as versioned migrations, run at start-up under an advisory lock.

The tables hold what SQLite's do (see :mod:`stemtrace.store.schema`), with the
same columns and the same meaning, so that one batch of events leaves the same
rows in either; the differences are PostgreSQL's:

* ``tasks.rowid`` is an identity column: history and planned ids name a task
  by it, as SQLite's do by its rowid (it grows with first sight).
* ``history`` is **partitioned by day** of writing (``written_at``, UTC), one
  partition a day made by the writer before the day's first batch
  (:func:`ensure_day`): retention drops whole days instead of deleting rows.
  The write time, not the task's first-seen time, because a late event can move
  a task's first sight earlier, and a row must never have to change partitions.
* ``tasks`` is not partitioned: the upsert needs one unique ``id`` across the
  table, which PostgreSQL offers on a partitioned table only when the
  partition key is part of it. Retention deletes its rows in slices.
* ``end`` is a reserved word: ``worker_gaps`` quotes it.
* ``tasks.id`` sorts by code point (``COLLATE "C"``), as SQLite's ``BINARY``
  does, whatever the database's collation: pages and their cursors agree.

Migrations are a list: never edit one that has shipped, add the next. Two
servers starting at once on an empty database both call :func:`migrate`; the
transaction-level advisory lock lets one apply the pending ones while the
other waits, then finds nothing left to do.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from stemtrace.store.migrations import INFLIGHT_COLUMNS, INFLIGHT_STATES
from stemtrace.store.pg import rollup_writes, search

logger = logging.getLogger("stemtrace")

MIGRATION_LOCK = 0x5374656D  # "Stem": the advisory lock key the migrations take
DAY = 86400

_M001_INITIAL = (
    """
    CREATE TABLE tasks (
        rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        id text COLLATE "C" PRIMARY KEY,
        name text,
        state text NOT NULL,
        state_attempt bigint NOT NULL,
        state_rank bigint NOT NULL,
        state_ts double precision NOT NULL,
        parent_id text,
        root_id text,
        group_id text,
        group_index bigint,
        chord_id text,
        chord_name text,
        trace_id text,
        worker text,
        retries bigint NOT NULL DEFAULT 0,
        queue text,
        routing_key text,
        eta text,
        expires text,
        sent_at double precision,
        received_at double precision,
        started_at double precision,
        finished_at double precision,
        runtime double precision,
        args text,
        kwargs text,
        result text,
        exc_type text,
        exc_message text,
        traceback text,
        chain text,
        instrumented integer,
        seen_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        sources integer NOT NULL DEFAULT 1,
        detail_rank integer NOT NULL DEFAULT 2
    )
    """,
    "CREATE INDEX tasks_seen ON tasks (seen_at DESC, id DESC)",
    "CREATE INDEX tasks_state ON tasks (state, seen_at DESC)",
    "CREATE INDEX tasks_name ON tasks (name, seen_at DESC)",
    "CREATE INDEX tasks_worker ON tasks (worker, seen_at DESC)",
    "CREATE INDEX tasks_trace ON tasks (trace_id)",
    "CREATE INDEX tasks_root ON tasks (root_id)",
    "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
    "CREATE INDEX tasks_group ON tasks (group_id) WHERE group_id IS NOT NULL",
    "CREATE INDEX tasks_running ON tasks (worker, seen_at DESC) WHERE state = 'STARTED'",
    f"CREATE INDEX tasks_inflight ON tasks ({INFLIGHT_COLUMNS}) WHERE state IN ({INFLIGHT_STATES})",
    """
    CREATE TABLE history (
        task_rowid bigint NOT NULL,
        written_at double precision NOT NULL,
        events text NOT NULL
    ) PARTITION BY RANGE (written_at)
    """,
    "CREATE INDEX history_task ON history (task_rowid)",
    """
    CREATE TABLE workers (
        hostname text PRIMARY KEY,
        state text NOT NULL,
        online_at double precision,
        offline_at double precision,
        last_seen double precision NOT NULL,
        last_heartbeat double precision,
        heartbeat_freq double precision,
        pool text,
        concurrency bigint,
        sw_ver text,
        queues text,
        active bigint,
        processed bigint,
        loadavg text,
        dropped bigint,
        pid bigint
    )
    """,
    """
    CREATE TABLE worker_gaps (
        hostname text NOT NULL,
        start double precision NOT NULL,
        "end" double precision NOT NULL,
        PRIMARY KEY (hostname, start)
    )
    """,
    """
    CREATE TABLE registry (
        name text PRIMARY KEY,
        module text,
        signature text,
        queue text,
        max_retries double precision,
        default_retry_delay double precision,
        autoretry_for text,
        retry_backoff text,
        rate_limit text,
        time_limit double precision,
        soft_time_limit double precision,
        acks_late bigint,
        ignore_result bigint,
        workers text,
        updated_at double precision NOT NULL,
        retry_policy text
    )
    """,
    """
    CREATE TABLE cursors (
        source text PRIMARY KEY,
        position text NOT NULL,
        updated_at double precision NOT NULL
    )
    """,
    """
    CREATE TABLE skipped (
        reason text PRIMARY KEY,
        count bigint NOT NULL,
        first_at double precision NOT NULL,
        last_at double precision NOT NULL
    )
    """,
    """
    CREATE TABLE skipped_samples (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at double precision NOT NULL,
        source text NOT NULL,
        place text NOT NULL,
        reason text NOT NULL,
        sample text NOT NULL
    )
    """,
    "CREATE TABLE planned (id text PRIMARY KEY, task_rowid bigint NOT NULL)",
    "CREATE INDEX planned_task ON planned (task_rowid)",
    """
    CREATE TABLE queue_depths (
        queue text PRIMARY KEY, messages bigint, consumers bigint, error text,
        at double precision NOT NULL
    )
    """,
    """
    CREATE TABLE queue_depth_minutes (
        queue text NOT NULL, t bigint NOT NULL, messages bigint NOT NULL,
        PRIMARY KEY (queue, t)
    )
    """,
)

Step = str | Callable[[psycopg.Connection[tuple[object, ...]]], object]
MIGRATIONS: tuple[tuple[str, tuple[Step, ...]], ...] = (
    ("m001_initial", _M001_INITIAL),
    ("m002_rollups", (*rollup_writes.TABLES, rollup_writes.tally_all)),
    (
        "m003_registry_max_retries_integer",
        ("ALTER TABLE registry ALTER COLUMN max_retries TYPE bigint USING round(max_retries)",),
    ),
    ("m004_text_index", (search.create_index,)),
)
"""``(name, steps)`` in order; each runs once per database. A step is a statement, or a
function of the connection (m002 counts the tasks stored before it into the rollups).
m003: a count of retries reads back as SQLite's INTEGER column gives it (``3``, not ``3.0``).
m004: ``pg_trgm`` and the trigram index of the settled tasks behind ``q`` (:mod:`.search`)."""


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Apply the pending migrations in one transaction; the names this call applied.

    ``conn`` is in autocommit mode. The advisory lock is the transaction's, so
    it is let go at commit or rollback, and when a crashed server's connection
    drops.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stemtrace_migrations ("
            " name text PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        done = {str(row[0]) for row in conn.execute("SELECT name FROM stemtrace_migrations")}
        applied = []
        for name, statements in MIGRATIONS:
            if name in done:
                continue
            logger.info("stemtrace: PostgreSQL migration %s", name)
            for step in statements:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
            conn.execute(
                "INSERT INTO stemtrace_migrations (name, applied_at) VALUES (%s, %s)",
                (name, time.time()),
            )
            applied.append(name)
    return applied


def partition_name(day: int) -> str:
    """The history partition of day ``day`` (days since the epoch, UTC)."""
    return f"history_d{time.strftime('%Y%m%d', time.gmtime(day * DAY))}"


def ensure_day(conn: psycopg.Connection[tuple[object, ...]], day: int) -> None:
    """Make the history partition of ``day`` unless it exists (its own transaction).

    Writers that start a day at once serialise on an advisory lock instead of
    failing on the second ``CREATE``.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, %s::int)", (MIGRATION_LOCK, day))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF history FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier(partition_name(day)),
                sql.Literal(float(day * DAY)),
                sql.Literal(float((day + 1) * DAY)),
            )
        )


def history_days(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[int, str]]:
    """``(day, partition)`` of every history partition, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid"
        " JOIN pg_class AS p ON p.oid = i.inhparent"
        " WHERE p.relname = 'history' AND p.relnamespace = to_regnamespace(current_schema())"
    ).fetchall()
    found = []
    for (name,) in rows:
        stamp = str(name).removeprefix("history_d")
        try:
            start = calendar.timegm(time.strptime(stamp, "%Y%m%d"))
        except ValueError:
            continue
        found.append((start // DAY, str(name)))
    return sorted(found)


def drop_days_before(conn: psycopg.Connection[tuple[object, ...]], day: int) -> int:
    """Drop the history partitions of days before ``day``: how many."""
    dropped = 0
    for found, name in history_days(conn):
        if found >= day:
            break
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        dropped += 1
    return dropped
