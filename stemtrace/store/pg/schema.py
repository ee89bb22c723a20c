"""PostgreSQL's schema as versioned migrations, run at start-up under an advisory lock.

The tables hold what SQLite's do (see :mod:`stemtrace.store.schema`), with the
same columns and the same meaning, so that one batch of events leaves the same
rows in either; the differences are PostgreSQL's:

* ``tasks.rowid`` is an identity column: history and planned ids name a task
  by it, as SQLite's do by its rowid (it grows with first sight). It is unique
  by its sequence, not by a constraint (a partitioned table's unique keys must
  hold the partition key); each day's partition indexes it.
* The tables that grow with time are **partitioned by day** (UTC), one
  partition a day, made before the day's first batch
  (:mod:`~stemtrace.store.pg.days`), so that retention drops whole days instead
  of deleting rows:

  - ``history`` by the time of writing (``written_at``);
  - ``tasks`` by ``day``, the day its row was first written (migration m005),
    and ``task_tally`` (what the rollups counted of each task) by the same day.
    Write time, not first-seen time: a late event can move a task's first sight
    earlier, and a row must never have to change partitions.

  A task's key is ``(id, day)``: a partitioned table's unique keys must hold
  its partition key, so no constraint can say that an ``id`` is one row. The
  writers keep it one (:mod:`~stemtrace.store.pg.writer`): an ``id`` already
  stored is written into its own day's partition, a new one into the day
  ``tasks_day`` holds. Every batch reads that under a shared advisory lock, and
  it moves to the next day only under the exclusive one
  (:func:`~stemtrace.store.pg.days.roll_day`, which waits for the batches in
  flight), so writers at once always put a new task into the same day, where
  ``ON CONFLICT (id, day)`` makes it one row. ``tasks_day.kept_from`` is the
  first day writers may still write into: retention closes the older days
  before it drops them (:mod:`~stemtrace.store.pg.retention`). A lookup by
  ``id`` reads every day's index (the partitions cannot be pruned by it): as
  many as retention keeps, plus tomorrow's, made ahead.
* ``planned`` is not partitioned: it holds only the ids of chain links and chord
  callbacks; retention deletes the rows of the tasks it forgets.
* ``end`` is a reserved word: ``worker_gaps`` quotes it.
* ``tasks.id`` sorts by code point (``COLLATE "C"``), as SQLite's ``BINARY``
  does, whatever the database's collation: pages and their cursors agree.

Migrations are a list: never edit one that has shipped, add the next. Two
servers starting at once on an empty database both call :func:`migrate`; the
transaction-level advisory lock lets one apply the pending ones while the
other waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from stemtrace.store.migrations import INFLIGHT_COLUMNS, INFLIGHT_STATES
from stemtrace.store.pg import rollup_writes, search
from stemtrace.store.pg.days import DAY, LOCK_KEY, make_partitions

logger = logging.getLogger("stemtrace")

MIGRATION_LOCK = LOCK_KEY  # alone, the migrations' advisory lock

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

_BY_DAY = ("tasks", "task_tally")


def _m005_tasks_by_day(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Partition ``tasks`` and ``task_tally`` by ``day``, moving the rows stored before.

    Each table is renamed, made again partitioned with the same columns (and a
    ``day``), its rows copied into their days, and the old one dropped. A task's
    day is that of its first history row when one is left, else of its last
    write (``updated_at``, the writer's clock): never earlier than it was first
    written, so retention never forgets it sooner than it should. The indexes
    and triggers the old ``tasks`` had besides its keys, and its statistics objects
    (m004's, :data:`stemtrace.store.pg.search.STATISTICS`), are made again as they were
    (each partition gets the statistics of its own: :func:`make_partitions`); the
    identity goes on from where the old one stood.
    """
    remade = [
        str(row[0])
        for row in conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i"
            " WHERE i.indrelid = 'tasks'::regclass AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)"
            " UNION ALL SELECT pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
            " UNION ALL SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext"
            " WHERE stxrelid = 'tasks'::regclass"
        )
    ]
    for table in _BY_DAY:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(table), sql.Identifier(f"{table}_before_m005")))  # fmt: skip
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS,"
                " day integer NOT NULL, PRIMARY KEY ({}, day)) PARTITION BY RANGE (day)"
            ).format(
                sql.Identifier(table),
                sql.Identifier(f"{table}_before_m005"),
                sql.Identifier("id" if table == "tasks" else "task_rowid"),
            )
        )
    conn.execute(
        "CREATE TEMPORARY TABLE m005_days ON COMMIT DROP AS"
        " SELECT t.rowid, floor(coalesce(h.first, t.updated_at) / %s)::integer AS day"
        " FROM tasks_before_m005 AS t LEFT JOIN (SELECT task_rowid, min(written_at) AS first"
        " FROM history GROUP BY task_rowid) AS h ON h.task_rowid = t.rowid",
        (DAY,),
    )
    for (day,) in conn.execute("SELECT DISTINCT day FROM m005_days ORDER BY 1").fetchall():
        make_partitions(conn, int(str(day)), _BY_DAY)
    conn.execute(
        "INSERT INTO tasks OVERRIDING SYSTEM VALUE SELECT t.*, d.day"
        " FROM tasks_before_m005 AS t JOIN m005_days AS d ON d.rowid = t.rowid"
    )
    conn.execute(
        "INSERT INTO task_tally SELECT c.*, d.day"
        " FROM task_tally_before_m005 AS c JOIN m005_days AS d ON d.rowid = c.task_rowid"
    )
    conn.execute(  # on from the last value the old identity gave (unused ones included)
        "SELECT setval(pg_get_serial_sequence('tasks', 'rowid'), top) FROM (SELECT greatest("
        "pg_sequence_last_value(pg_get_serial_sequence('tasks_before_m005', 'rowid')::regclass),"
        " (SELECT max(rowid) FROM tasks)) AS top) AS s WHERE top IS NOT NULL"
    )
    conn.execute("DROP TABLE tasks_before_m005, task_tally_before_m005")
    for statement in remade:
        conn.execute(statement)
    conn.execute("CREATE INDEX tasks_rowid ON tasks (rowid)")
    conn.execute("CREATE TABLE tasks_day (day integer NOT NULL, kept_from integer NOT NULL)")
    conn.execute(
        "INSERT INTO tasks_day (day, kept_from) SELECT coalesce(max(day), 0), 0 FROM tasks"
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
    ("m005_tasks_by_day", (_m005_tasks_by_day,)),
    ("m006_planned_collation", ('ALTER TABLE planned ALTER COLUMN id TYPE text COLLATE "C"',)),
    ("m007_packed_histograms", (rollup_writes.pack_histograms,)),
)
"""``(name, steps)`` in order; each runs once per database. A step is a statement, or a
function of the connection (m002 counts the tasks stored before it into the rollups).
m003: a count of retries reads back as SQLite's INTEGER column gives it (``3``, not ``3.0``).
m004: ``pg_trgm`` and the trigram index of the settled tasks behind ``q`` (:mod:`.search`).
m005: ``tasks`` and ``task_tally`` partitioned by day (:func:`_m005_tasks_by_day`).
m006: ``planned.id`` sorts as ``tasks.id`` does (``COLLATE "C"``): the flows list's test of
whether a task is a planned link (``planned.id = tasks.id``) compares in ``tasks.id``'s
collation, which the key of a ``planned`` in the database's own could not serve (a whole
scan of ``planned`` per task listed: the flows page took 1.1 s on a million tasks).
m007: ``rollup_hist`` a row per cell, its bucket counts in one ``bigint[]``
(:func:`~stemtrace.store.pg.rollup_writes.pack_histograms`)."""


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
