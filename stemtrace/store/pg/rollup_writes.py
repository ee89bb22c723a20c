"""The rollups and digests on PostgreSQL: SQLite's tables, counted by the same Python.

The tables are those of SQLite's migration 11 (:mod:`stemtrace.store.rollups`,
:mod:`stemtrace.store.digests`), the same columns and keys. Counting a batch is
:class:`stemtrace.store.tally.Batch`, shared by both backends; only the SELECT
of the touched rows (:func:`stemtrace.store.tally.select_sql`, its bits cast to
integers) and the statements that write what the batch counted are spelled
here. Each statement's rows are written in key order, so that writers counting
into the same periods at once lock them in one order.

The rollups are not partitioned: they hold a row per key and minute or hour,
not per task, and fold their minutes into hours after two days, so a day is
small, and the hours and the since-ever totals (period 0) outlive any day; the
error hours likewise. ``task_tally`` has a row per task: since migration m005
it is partitioned by its task's ``day`` (:mod:`stemtrace.store.pg.schema`) and
goes with the task's day; :func:`forget_day` takes a whole day out of the
per-name numbers and the flow and trace indexes by counting it in SQL.
Text keys sort by code point (``COLLATE "C"``), as SQLite's do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from stemtrace.core import buckets, states
from stemtrace.store import digests, rollups
from stemtrace.store.pg.days import partition_name
from stemtrace.store.pg.rollup_reads import Lite
from stemtrace.store.rollups import OUTCOMES
from stemtrace.store.tally import Batch, Row, facts, select_sql

Conn = psycopg.Connection[tuple[Any, ...]]

_C = 'text COLLATE "C" NOT NULL'
HIST_TABLE = f"""CREATE TABLE rollup_hist (
        dim {_C}, key {_C}, metric text NOT NULL, res integer NOT NULL,
        t bigint NOT NULL, counts bigint[] NOT NULL, PRIMARY KEY (dim, key, res, t, metric)
    )"""
HIST_INDEX = "CREATE INDEX rollup_hist_by_time ON rollup_hist (dim, res, t)"
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
    HIST_TABLE,
    HIST_INDEX,
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
"""The migration's statements (SQLite's migration 11, in PostgreSQL's types; m005 adds
``task_tally.day`` and partitions it). ``rollup_hist`` is made as m007 leaves it (a row
per cell, its bucket counts in a ``bigint[]``): the rollups are built by today's writer."""

_DIALECT = {
    "new": f"({facts(lambda cond: f'({cond})::int')}) & ~coalesce(c.tally, 0)",
    "retries_now": "t.retries",
}
_JOIN = "LEFT JOIN task_tally AS c ON c.task_rowid = t.rowid"
SELECT = select_sql("t.rowid = ANY(%s)", **_DIALECT).replace(
    _JOIN,
    "LEFT JOIN LATERAL (SELECT * FROM task_tally AS c WHERE c.task_rowid = t.rowid"
    " AND c.day = t.day LIMIT 1) AS c ON true",
)
"""What is counted of the tasks of some rowids: each found through every day's index of
rowids, and its ``task_tally`` row in its own day's (a lateral lookup: a new day's partition
is not analyzed yet, and the planner guessed a merge of whole days' tallies cheaper)."""
assert SELECT.count("c.day = t.day") == 1
SELECT_M002 = select_sql("t.rowid = ANY(%s)", **_DIALECT)
"""The same before m005, for m002's count of the tasks stored before it."""


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
        "INSERT INTO rollup_hist AS h (dim, key, metric, res, t, counts)"
        f" VALUES ({_values(5)}, %s::bigint[]) ON CONFLICT (dim, key, res, t, metric)"
        " DO UPDATE SET counts = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)"
        " FROM unnest(h.counts, excluded.counts) WITH ORDINALITY AS u(a, b, i) ORDER BY i)",
        5,
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
        "INSERT INTO task_tally (task_rowid, tally, state, retries, flow, trace, day)"
        f" VALUES ({_values(7)}) ON CONFLICT (task_rowid, day) DO UPDATE SET"
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


def tally(conn: Conn, days: Mapping[int, int]) -> None:
    """Count what the rows of the tasks ``days`` names (rowid: its day) show and were not
    counted as; in the writer's transaction, after the batch's task rows are written (they
    are locked till commit, so a task is counted by one writer at a time)."""
    rows: list[Row] = conn.execute(SELECT, (list(days),)).fetchall()
    if rows:
        write(conn, Batch(rows), days)


def write(conn: Conn, batch: Batch, days: Mapping[int, int] | None = None) -> None:
    """Write what ``batch`` counted; ``days`` gives each task's day for ``task_tally``
    (``None``: before m005, when it had none)."""
    cursor = conn.cursor()
    for name, rows in batch.writes():
        statement, key = STATEMENTS[name]
        if name == "tally" and days is not None:
            _tally(cursor, rows, days)
            continue
        if name == "tally":
            statement = _TALLY_M002
        in_key_order = sorted(rows, key=_first(key))
        cursor.executemany(statement, in_key_order)


def _tally(cursor: Any, rows: list[tuple[Any, ...]], days: Mapping[int, int]) -> None:
    """Each day's ``task_tally`` rows into its partition directly (as the writer's tasks), in
    (day, rowid) order."""
    in_days: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        in_days.setdefault(days[row[0]], []).append((*row, days[row[0]]))
    for day in sorted(in_days):
        statement = sql.SQL(STATEMENTS["tally"][0].replace("task_tally", "{}", 1)).format(
            sql.Identifier(partition_name(day, "task_tally"))
        )
        cursor.executemany(statement, sorted(in_days[day], key=_first(1)))


_TALLY_M002 = (
    "INSERT INTO task_tally (task_rowid, tally, state, retries, flow, trace)"
    f" VALUES ({_values(6)}) ON CONFLICT (task_rowid) DO UPDATE SET"
    " tally = excluded.tally, state = excluded.state, retries = excluded.retries,"
    " flow = excluded.flow, trace = excluded.trace"
)


def _first(n: int) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    return lambda row: row[:n]


def tally_all(conn: Conn, chunk: int = 50_000) -> int:
    """Count every stored task (m002, the migration that adds the rollups to a database:
    its statements are those of the schema it runs on, before m005)."""
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
        rows: list[Row] = conn.execute(SELECT_M002, (rowids,)).fetchall()
        if rows:
            write(conn, Batch(rows))
        done += len(rowids)
        last = rowids[-1]


_FORGET_SELECT = (
    "SELECT t.name, c.retries, c.state, c.flow, c.trace"
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid AND t.day = c.day"
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


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in sorted(values))


_OF_DAY = (
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid AND t.day = c.day"
    " WHERE c.day = %s"
)
_COUNTS_OF_DAY = (
    "SELECT t.name, c.state, count(*), count(*) FILTER (WHERE c.retries <> 0)"
    f"{_OF_DAY} GROUP BY t.name, c.state"
)
_INDEX_OF_DAY = (
    "SELECT c.{column}, NULL::double precision, NULL::double precision, -count(*),"
    f" -count(*) FILTER (WHERE c.state IN ({_in(states.BROKEN)})),"
    f" -count(*) FILTER (WHERE c.state NOT IN ({_in(states.TERMINAL)})){{extra}}"
    " FROM task_tally AS c WHERE c.day = %s AND c.state IS NOT NULL"
    " AND c.{column} IS NOT NULL GROUP BY c.{column} ORDER BY c.{column}"
)


def forget_day(conn: Conn, day: int) -> None:
    """:func:`forget` for every task of ``day`` at once, counted in SQL (as
    :func:`stemtrace.store.rollups.forgotten` and :func:`stemtrace.store.digests.forgotten`
    count in Python): in retention's transaction, before the day's partitions are dropped.
    The flow and trace indexes take each key's count in one statement, in key order."""
    counts: dict[tuple[str, str], int] = {}
    retried: dict[str, int] = {}
    for task_name, state, n, with_retries in conn.execute(_COUNTS_OF_DAY, (day,)):
        counts[task_name, state] = -int(n)
        if with_retries:
            retried[task_name] = retried.get(task_name, 0) - int(with_retries)
    cursor = conn.cursor()
    for index, column, table, key, extra in (
        ("flow", "flow", "flow_index", "key", ""),
        ("trace", "trace", "trace_index", "trace_id", ", 0"),
    ):
        upsert = STATEMENTS[index][0]
        head, _, rest = upsert.partition(" VALUES (")
        conflict = rest[rest.index(" ON CONFLICT") :]
        cursor.execute(
            f"{head} {_INDEX_OF_DAY.format(column=column, extra=extra)}{conflict}", (day,)
        )
        cursor.execute(
            f"DELETE FROM {table} WHERE tasks <= 0 AND {key} IN"
            f" (SELECT {column} FROM task_tally WHERE day = %s)",
            (day,),
        )
    cursor.executemany(STATEMENTS["count"][0], sorted((*k, n) for k, n in counts.items()))
    cursor.executemany(
        "UPDATE task_names SET retried = retried + %s WHERE name = %s",
        [(n, task_name) for task_name, n in sorted(retried.items())],
    )
    conn.execute("DELETE FROM task_counts WHERE n <= 0")


def prune(conn: Conn, before: float) -> None:
    """Drop the periods and error hours that ended before ``before`` (retention's cutoff)."""
    rollups.prune(Lite(conn), before)


def fold(conn: Conn, before: float) -> int:
    """Forget the minutes of the hours that ended before ``before``; how many rows went."""
    return rollups.fold(Lite(conn), before)


_CELL = "dim, key, metric, res, t"
_PACK = f"""INSERT INTO rollup_hist ({_CELL}, counts)
SELECT {_CELL}, array_agg(coalesce(n, 0) ORDER BY i) FROM (
    SELECT k.dim, k.key, k.metric, k.res, k.t, g.i, h.n
    FROM (SELECT {_CELL}, max(bucket) AS top FROM rollup_hist_by_bucket
          WHERE bucket BETWEEN 0 AND {buckets.COUNT - 1} AND n > 0 GROUP BY {_CELL}) AS k
    CROSS JOIN LATERAL generate_series(0, k.top) AS g(i)
    LEFT JOIN rollup_hist_by_bucket AS h ON (h.dim, h.key, h.metric, h.res, h.t, h.bucket)
        = (k.dim, k.key, k.metric, k.res, k.t, g.i) AND h.n > 0
) AS cells GROUP BY {_CELL}"""
"""m007's packing, in SQL: each cell's counts up to its last bucket counted (a bucket out of
the layout, or a count not above 0, counts nothing, as the reads left them)."""


def pack_histograms(conn: Conn) -> None:
    """m007: ``rollup_hist`` with a row per cell, its bucket counts in one ``bigint[]``
    (SQLite's m013); nothing to do where m002 already made that layout."""
    packed = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'rollup_hist' AND column_name = 'counts'"
    ).fetchone()
    if packed:
        return
    conn.execute("ALTER TABLE rollup_hist RENAME TO rollup_hist_by_bucket")
    conn.execute("DROP INDEX rollup_hist_by_time")
    conn.execute("ALTER TABLE rollup_hist_by_bucket DROP CONSTRAINT rollup_hist_pkey")
    conn.execute(HIST_TABLE)
    conn.execute(_PACK)
    conn.execute("DROP TABLE rollup_hist_by_bucket")
    conn.execute(HIST_INDEX)
