"""The rollups and digests on PostgreSQL: SQLite's tables, counted by the same Python.

The tables are those of SQLite's migration 11 (:mod:`stemtrace.store.rollups`,
:mod:`stemtrace.store.digests`), the same columns and keys. Counting a batch is
:class:`stemtrace.store.tally.Batch`, shared by both backends; only the SELECT
of the touched rows (:func:`stemtrace.store.tally.select_sql`, its bits cast to
integers) and the statements that write what the batch counted are spelled
here. Each statement's rows are written in key order, so that writers counting
into the same periods at once lock them in one order.

None of these tables is partitioned. The rollups hold a row per key and minute
or hour, not per task, and fold their minutes into hours after two days, so a
day is small, and the hours and the since-ever totals (period 0) outlive any
day; the error hours likewise. ``task_tally`` has a row per task and goes with
the task's row, which is not partitioned either (see :mod:`stemtrace.store.pg.schema`).
Text keys sort by code point (``COLLATE "C"``), as SQLite's do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from stemtrace.store import digests, rollups
from stemtrace.store.pg.rollup_reads import Lite
from stemtrace.store.rollups import OUTCOMES
from stemtrace.store.tally import Batch, Row, facts, select_sql

Conn = psycopg.Connection[tuple[Any, ...]]

_C = 'text COLLATE "C" NOT NULL'
TABLES = (
    """CREATE TABLE task_tally (
        task_rowid bigint PRIMARY KEY, tally bigint NOT NULL, state text,
        retries bigint NOT NULL, flow text, trace text
    )""",
    f"""CREATE TABLE rollups (
        dim {_C}, key {_C}, res integer NOT NULL, t bigint NOT NULL,
        {", ".join(f"{c} bigint NOT NULL DEFAULT 0" for c in OUTCOMES)},
        PRIMARY KEY (dim, key, res, t)
    )""",
    "CREATE INDEX rollups_by_time ON rollups (dim, res, t)",
    f"""CREATE TABLE rollup_hist (
        dim {_C}, key {_C}, metric text NOT NULL, res integer NOT NULL,
        t bigint NOT NULL, bucket integer NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (dim, key, res, t, metric, bucket)
    )""",
    "CREATE INDEX rollup_hist_by_time ON rollup_hist (dim, res, t)"
    " INCLUDE (key, metric, bucket, n)",
    f"""CREATE TABLE task_counts (
        name {_C}, state text NOT NULL, n bigint NOT NULL, PRIMARY KEY (name, state)
    )""",
    f"""CREATE TABLE task_names (
        name {_C} PRIMARY KEY, last_seen double precision, retried bigint NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE rollup_state (folded_before double precision NOT NULL)",
    "INSERT INTO rollup_state (folded_before) VALUES (0)",
    f"""CREATE TABLE error_groups (
        name {_C}, fingerprint {_C}, exc_type text, message text,
        first_seen double precision, last_seen double precision, last_task_id text,
        PRIMARY KEY (name, fingerprint)
    )""",
    f"""CREATE TABLE error_hours (
        name {_C}, fingerprint {_C}, t bigint NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (name, fingerprint, t)
    )""",
    "CREATE INDEX error_hours_by_time ON error_hours (t)",
    f"""CREATE TABLE flow_index (
        key {_C} PRIMARY KEY, first_seen double precision, last_seen double precision,
        tasks bigint NOT NULL DEFAULT 0, failures bigint NOT NULL DEFAULT 0,
        running bigint NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX flow_index_recent ON flow_index (first_seen DESC, key DESC) WHERE tasks > 0",
    f"""CREATE TABLE trace_index (
        trace_id {_C} PRIMARY KEY, first_seen double precision, last_seen double precision,
        tasks bigint NOT NULL DEFAULT 0, failures bigint NOT NULL DEFAULT 0,
        running bigint NOT NULL DEFAULT 0, explicit integer NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX trace_index_recent ON trace_index (first_seen DESC, trace_id DESC)",
)
"""The migration's statements (SQLite's migration 11, in PostgreSQL's types)."""

SELECT = select_sql(
    "t.rowid = ANY(%s)",
    new=f"({facts(lambda cond: f'({cond})::int')}) & ~coalesce(c.tally, 0)",
    retries_now="t.retries",
)


def _values(n: int) -> str:
    return ", ".join(["%s"] * n)


def _upsert_index(table: str, key: str, extra: str = "") -> str:
    """:func:`stemtrace.store.digests._upsert_index` (``LEAST``/``GREATEST`` for ``min``/``max``;
    each is given non-null arguments, or all null, where the two agree)."""
    more = f", {extra}" if extra else ""
    also = f", {extra} = GREATEST(i.{extra}, excluded.{extra})" if extra else ""
    return (
        f"INSERT INTO {table} AS i ({key}, first_seen, last_seen, tasks, failures, running{more})"
        f" VALUES ({_values(7 if extra else 6)}) ON CONFLICT ({key}) DO UPDATE SET"
        " first_seen = LEAST(coalesce(i.first_seen, excluded.first_seen),"
        " coalesce(excluded.first_seen, i.first_seen)),"
        " last_seen = GREATEST(coalesce(i.last_seen, excluded.last_seen),"
        " coalesce(excluded.last_seen, i.last_seen)),"
        " tasks = i.tasks + excluded.tasks, failures = i.failures + excluded.failures,"
        f" running = i.running + excluded.running{also}"
    )


STATEMENTS: dict[str, tuple[str, int]] = {
    "rollup": (
        f"INSERT INTO rollups AS r (dim, key, res, t, {', '.join(OUTCOMES)})"
        f" VALUES ({_values(10)}) ON CONFLICT (dim, key, res, t) DO UPDATE SET "
        + ", ".join(f"{c} = r.{c} + excluded.{c}" for c in OUTCOMES),
        4,
    ),
    "hist": (
        "INSERT INTO rollup_hist AS h (dim, key, metric, res, t, bucket, n)"
        f" VALUES ({_values(7)}) ON CONFLICT (dim, key, res, t, metric, bucket)"
        " DO UPDATE SET n = h.n + excluded.n",
        6,
    ),
    "count": (
        "INSERT INTO task_counts AS c (name, state, n) VALUES (%s, %s, %s)"
        " ON CONFLICT (name, state) DO UPDATE SET n = c.n + excluded.n",
        2,
    ),
    "drop_empty": ("DELETE FROM task_counts WHERE name = %s AND state = %s AND n <= 0", 2),
    "name": (
        "INSERT INTO task_names AS m (name, last_seen, retried) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET last_seen = GREATEST("
        "coalesce(m.last_seen, excluded.last_seen), coalesce(excluded.last_seen, 0)),"
        " retried = m.retried + excluded.retried",
        1,
    ),
    "tally": (
        "INSERT INTO task_tally (task_rowid, tally, state, retries, flow, trace)"
        f" VALUES ({_values(6)}) ON CONFLICT (task_rowid) DO UPDATE SET"
        " tally = excluded.tally, state = excluded.state, retries = excluded.retries,"
        " flow = excluded.flow, trace = excluded.trace",
        1,
    ),
    "group": (
        "INSERT INTO error_groups AS g (name, fingerprint, exc_type, message, first_seen,"
        f" last_seen, last_task_id) VALUES ({_values(7)})"
        " ON CONFLICT (name, fingerprint) DO UPDATE SET"
        " first_seen = LEAST(g.first_seen, excluded.first_seen),"
        " last_task_id = CASE WHEN excluded.last_seen >= g.last_seen"
        " THEN excluded.last_task_id ELSE g.last_task_id END,"
        " last_seen = GREATEST(g.last_seen, excluded.last_seen)",
        2,
    ),
    "hour": (
        "INSERT INTO error_hours AS e (name, fingerprint, t, n) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (name, fingerprint, t) DO UPDATE SET n = e.n + excluded.n",
        3,
    ),
    "flow": (_upsert_index("flow_index", "key"), 1),
    "trace": (_upsert_index("trace_index", "trace_id", "explicit"), 1),
}
"""Per write a :class:`~stemtrace.store.tally.Batch` names: PostgreSQL's statement
(SQLite's, :data:`stemtrace.store.tally.SQLITE`, in this dialect) and how many of
its leading parameters are the row's key."""


def tally(conn: Conn, rowids: Iterable[int]) -> None:
    """Count what the rows ``rowids`` show and were not counted as; in the writer's
    transaction, after the batch's task rows are written (they are locked till commit,
    so a task is counted by one writer at a time)."""
    rows: list[Row] = conn.execute(SELECT, (list(rowids),)).fetchall()
    if rows:
        write(conn, Batch(rows))


def write(conn: Conn, batch: Batch) -> None:
    cursor = conn.cursor()
    for name, rows in batch.writes():
        statement, key = STATEMENTS[name]
        in_key_order = sorted(rows, key=_first(key))
        cursor.executemany(statement, in_key_order)


def _first(n: int) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    return lambda row: row[:n]


def tally_all(conn: Conn, chunk: int = 50_000) -> int:
    """Count every stored task (the migration that adds the rollups to a database)."""
    done = 0
    last = 0
    while True:
        rowids = [
            int(row[0])
            for row in conn.execute(
                "SELECT rowid FROM tasks WHERE rowid > %s ORDER BY rowid LIMIT %s", (last, chunk)
            )
        ]
        if not rowids:
            return done
        tally(conn, rowids)
        done += len(rowids)
        last = rowids[-1]


_FORGET_SELECT = (
    "SELECT t.name, c.retries, c.state, c.flow, c.trace"
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid"
    " WHERE c.task_rowid = ANY(%s)"
)


def forget(conn: Conn, rowids: list[int]) -> None:
    """Take tasks about to be deleted out of the per-name numbers and the flow and trace
    indexes (SQLite's :func:`stemtrace.store.rollups.forget`); in retention's transaction."""
    counts, retried, listed = rollups.forgotten(conn.execute(_FORGET_SELECT, (rowids,)).fetchall())
    flows, traces = digests.forgotten(listed)
    cursor = conn.cursor()
    for name, rows in (("flow", flows), ("trace", traces)):
        statement, key = STATEMENTS[name]
        in_key_order = sorted(rows, key=_first(key))
        cursor.executemany(statement, in_key_order)
    cursor.executemany(
        "DELETE FROM flow_index WHERE key = %s AND tasks <= 0", sorted(r[:1] for r in flows)
    )
    cursor.executemany(
        "DELETE FROM trace_index WHERE trace_id = %s AND tasks <= 0", sorted(r[:1] for r in traces)
    )
    cursor.executemany(STATEMENTS["count"][0], sorted(counts))
    by_name = sorted(retried, key=lambda row: row[1])
    cursor.executemany("UPDATE task_names SET retried = retried + %s WHERE name = %s", by_name)
    conn.execute("DELETE FROM task_counts WHERE n <= 0")
    conn.execute("DELETE FROM task_tally WHERE task_rowid = ANY(%s)", (rowids,))


def prune(conn: Conn, before: float) -> None:
    """Drop the periods and error hours that ended before ``before`` (retention's cutoff)."""
    rollups.prune(Lite(conn), before)


def fold(conn: Conn, before: float) -> int:
    """Forget the minutes of the hours that ended before ``before``; how many rows went."""
    return rollups.fold(Lite(conn), before)
