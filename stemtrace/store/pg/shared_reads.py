"""PostgreSQL's reads of flows, traces, groups, workers, the in-flight tasks and the queues.

Each is SQLite's read function (:mod:`stemtrace.store.queries`, :mod:`~stemtrace.store.lists`,
:mod:`~stemtrace.store.fleet`, :mod:`~stemtrace.store.worker_detail`,
:mod:`~stemtrace.store.inflight`, :mod:`~stemtrace.store.depths`,
:mod:`~stemtrace.store.skipped`), Python and SQL, run through :class:`Spelled`:
the rollups' adapter (:class:`~stemtrace.store.pg.rollup_reads.Lite`: placeholders,
no index hints, sums as integers) with the few statements the two dialects
read differently written again in PostgreSQL's words (:data:`RESPELLED`):

* JSON: SQLite's ``json_each`` and ``json_extract`` are ``jsonb_array_elements``
  and ``->`` (a retry's next attempt, a worker's queues). SQLite's guard
  against text that is not JSON (``json_valid``, for what older versions
  stored) has no PostgreSQL 15 spelling short of a function; this store's
  rows were all written as JSON by its writer, so a queues list is read when
  it starts as one;
* NULLs: SQLite sorts them first going up, PostgreSQL last (:data:`NULLS_FIRST`);
* text order: registry names and hostnames by code point (``COLLATE "C"``), as
  SQLite's ``BINARY``, whatever the database's collation;
* ``end`` is a reserved word;
* a bare column beside ``MIN()`` takes the minimum's row in SQLite only
  (``DISTINCT ON`` here, ties to the smallest id as SQLite's index order does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from psycopg_pool import ConnectionPool

from stemtrace.store import depths, fleet, inflight, lists, queries, skipped, worker_detail
from stemtrace.store.lists import FlowFilters
from stemtrace.store.migrations import HISTORY_RECORD, INFLIGHT_STATES
from stemtrace.store.pg.rollup_reads import Conn, Lite

Row = dict[str, Any]

_KIND, _RETRIES, _TS, _RETRY_AT = (
    HISTORY_RECORD.index(f) for f in ("kind", "retries", "ts", "retry_at")
)
JSONB_OF = r"replace({}, '\u0000', '\ufffd')::jsonb"
"""Stored JSON text as ``jsonb``, which refuses the escape ``\u0000`` (it holds no NUL)
that Python's JSON gives a NUL in a text (an exception's message, a queue's name): the
escape is read as U+FFFD, as the writer stores a NUL in a column. (An escaped
backslash before ``u0000`` reads as ``\ufffd`` too: still JSON, and only in what the
statements below do not read.)"""

_RETRIES_OF = (
    "SELECT r -> {at} FROM history AS h,"
    f" jsonb_array_elements({JSONB_OF.format('h.events')}) AS r"
    " WHERE h.task_rowid = ? AND r ->> {kind} = 'retry'"
    " ORDER BY {order} LIMIT 1"
)

RESPELLED: dict[str, str] = {
    depths.SCHEDULED: (
        f"SELECT {depths.SCHEDULED_COLUMNS}, CASE WHEN state = 'RETRY' THEN ("
        + _RETRIES_OF.replace("= ?", "= tasks.rowid").format(
            at=_RETRY_AT,
            kind=_KIND,
            order=f"r -> {_RETRIES} DESC NULLS LAST, r -> {_TS} DESC NULLS LAST",
        )
        + f") END FROM tasks WHERE state IN ({INFLIGHT_STATES})"
        " AND state IN ('PENDING', 'RECEIVED', 'RETRY') AND eta IS NOT NULL"
    ),
    worker_detail.NEXT_ATTEMPT: _RETRIES_OF.format(
        at=_RETRY_AT, kind=_KIND, order=f"r -> {_TS} DESC NULLS LAST"
    ),
    worker_detail.GAPS: (
        'SELECT start, "end" FROM worker_gaps WHERE hostname = ? AND "end" > ? AND start < ?'
        " ORDER BY start"
    ),
    "SELECT * FROM workers ORDER BY hostname": (
        'SELECT * FROM workers ORDER BY hostname COLLATE "C"'
    ),
    "SELECT name FROM registry ORDER BY name": (
        'SELECT name FROM registry ORDER BY name COLLATE "C"'
    ),
    "SELECT hostname FROM workers ORDER BY 1": (
        'SELECT hostname FROM workers ORDER BY hostname COLLATE "C"'
    ),
    "SELECT value FROM workers, json_each(CASE WHEN json_valid(workers.queues)"
    " AND json_type(workers.queues) = 'array' THEN workers.queues ELSE '[]' END)"
    " WHERE json_each.type = 'text'"
    " UNION SELECT queue FROM registry WHERE queue IS NOT NULL": (
        "SELECT q #>> '{}' FROM workers, jsonb_array_elements(CASE WHEN left(workers.queues, 1)"
        f" = '[' THEN {JSONB_OF.format('workers.queues')} ELSE '[]' END) AS q"
        " WHERE jsonb_typeof(q) = 'string'"
        " UNION SELECT queue FROM registry WHERE queue IS NOT NULL"
    ),
    f"SELECT queue, COUNT(*), MIN(sent_at), id, name FROM {depths.INFLIGHT}"
    " AND state = 'PENDING' GROUP BY queue": (
        "SELECT DISTINCT ON (queue) queue, COUNT(*) OVER (PARTITION BY queue), sent_at, id, name"
        f" FROM tasks WHERE state IN ({INFLIGHT_STATES}) AND state = 'PENDING'"
        " ORDER BY queue, sent_at NULLS LAST, id"
    ),
}
"""SQLite's statement -> PostgreSQL's, for the statements the dialects read differently."""

NULLS_FIRST = (
    ("ORDER BY group_index, seen_at", "ORDER BY group_index NULLS FIRST, seen_at"),
    ("ORDER BY sent_at LIMIT", "ORDER BY sent_at NULLS FIRST LIMIT"),
)
"""SQLite's orders over a column that may be NULL, in any statement, as PostgreSQL's with
SQLite's NULLs first going up: a group's members without an index (``group_page``, a
flow's first member), tasks never seen sent (the in-flight tasks of a state, a worker's
waiting tasks)."""


class Spelled(Lite):
    """:class:`Lite`, with :data:`RESPELLED`'s statements in PostgreSQL's words."""

    def __init__(self, conn: Conn) -> None:
        super().__init__(conn)
        self.respelled: set[str] = set()
        """The statements of :data:`RESPELLED` this connection ran (for the tests)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if sql in RESPELLED:
            self.respelled.add(sql)
            sql = RESPELLED[sql]
        else:
            for sqlite_order, order in NULLS_FIRST:
                sql = sql.replace(sqlite_order, order)
        return super().execute(sql, parameters)


class SharedReads:
    """The reads of :class:`stemtrace.store.surface.Backend` that SQLite's functions
    answer on PostgreSQL too, on a pool."""

    pool: ConnectionPool[Conn]

    def flow_rows(self, task_id: str) -> list[Row] | None:
        with self.pool.connection() as conn:
            return queries.flow_rows(Spelled(conn), task_id)

    def trace_rows(self, trace_id: str) -> list[Row]:
        with self.pool.connection() as conn:
            return queries.trace_rows(Spelled(conn), trace_id)

    def group_page(self, group_id: str, offset: int, limit: int) -> tuple[int, list[Row]]:
        with self.pool.connection() as conn:
            return queries.group_page(Spelled(conn), group_id, offset, limit)

    def list_flows(
        self, filters: FlowFilters, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        with self.pool.connection() as conn:
            return lists.list_flows(Spelled(conn), filters, cursor, limit)

    def list_traces(
        self, since: float | None, until: float | None, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        with self.pool.connection() as conn:
            return lists.list_traces(Spelled(conn), since, until, cursor, limit)

    def workers(
        self, now: float | None = None, timeout: float = 60.0, *, running: bool = True
    ) -> list[Row]:
        with self.pool.connection() as conn:
            return fleet.workers(Spelled(conn), now, timeout, at_once=True, running=running)

    def worker(
        self, hostname: str, since: float, now: float | None = None, timeout: float = 60.0
    ) -> Row | None:
        now = time.time() if now is None else now
        with self.pool.connection() as conn:
            return worker_detail.worker(Spelled(conn), hostname, since, now, timeout)

    def filter_choices(self) -> dict[str, list[str]]:
        with self.pool.connection() as conn:
            return queries.filter_choices(Spelled(conn))

    def inflight(self, limit: int = 20_000) -> list[Row]:
        with self.pool.connection() as conn:
            return inflight.inflight(Spelled(conn), limit)

    def ahead_of(self, queue: str, sent_at: float) -> int:
        with self.pool.connection() as conn:
            return inflight.ahead_of(Spelled(conn), queue, sent_at)

    def time_limits(self) -> dict[str, tuple[float | None, float | None]]:
        with self.pool.connection() as conn:
            return inflight.time_limits(Spelled(conn))

    def known_queues(self) -> list[str]:
        with self.pool.connection() as conn:
            return depths.known(Spelled(conn))

    def queue_depths(self) -> dict[str, Row]:
        with self.pool.connection() as conn:
            return depths.latest(Spelled(conn))

    def queue_backlog(
        self, queues: list[str], since: float, step: int = 60
    ) -> dict[str, list[tuple[int, int]]]:
        with self.pool.connection() as conn:
            return depths.backlog(Spelled(conn), queues, since, step)

    def waiting_by_queue(self) -> dict[str, Row]:
        with self.pool.connection() as conn:
            return depths.waiting(Spelled(conn))

    def scheduled(self, limit: int) -> tuple[int, list[Row]]:
        with self.pool.connection() as conn:
            return depths.scheduled(Spelled(conn), limit)

    def skipped(self, samples: int = 20) -> dict[str, Any]:
        with self.pool.connection() as conn:
            return skipped.summary(Spelled(conn), samples)

    def is_empty(self) -> bool:
        with self.pool.connection() as conn:
            return queries.is_empty(Spelled(conn))

    def last_write(self) -> float | None:
        with self.pool.connection() as conn:
            return queries.last_write(Spelled(conn))
