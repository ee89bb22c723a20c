"""PostgreSQL's reads of the rollups and digests: SQLite's reads, run through :class:`Lite`.

The series, the totals per key, the counters since ever, the per-name numbers
and the registry built on them (:mod:`stemtrace.store.rollups`,
:mod:`stemtrace.store.fleet`), the error groups (:mod:`stemtrace.store.lists`)
and the task count (:mod:`stemtrace.store.queries`) are written once, in SQL
both dialects read alike; :class:`Lite` spells it for PostgreSQL. So each
answer is SQLite's, computed from the same rows (:mod:`~stemtrace.store.pg.rollup_writes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg_pool import ConnectionPool

from stemtrace.store import fleet, lists, queries, rollups
from stemtrace.store.pg.reads import _pg, reader

Conn = psycopg.Connection[tuple[Any, ...]]
Row = dict[str, Any]

_HINT = re.compile(r"\s+INDEXED BY \w+")


class _Whole(Loader):
    """``SUM`` of ``bigint`` is ``numeric`` in PostgreSQL; SQLite's is an integer."""

    def load(self, data: Buffer) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


class Lite:
    """A PostgreSQL connection that runs SQLite's shared SQL (the reads here, and the
    rollups' prune and fold) (:class:`stemtrace.store.dbapi.Executes`): ``?`` placeholders
    as psycopg's, no index hints (``INDEXED BY``: PostgreSQL's planner picks), sums as
    integers, a NUL in a text parameter as the writer stores it (:func:`reads.reader`)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        cursor = reader(self.conn)
        cursor.adapters.register_loader("numeric", _Whole)
        return cursor.execute(_pg(_HINT.sub("", sql)), parameters)


class RollupReads:
    """The rollup reads of :class:`stemtrace.store.surface.Backend`, on a pool."""

    pool: ConnectionPool[Conn]

    def stats(self, since: float, until: float, step: int, dim: str, key: str) -> list[Row]:
        with self.pool.connection() as conn:
            return rollups.series(Lite(conn), since, until, step, dim, key)

    def stats_by(
        self, dim: str, since: float, until: float, metrics: tuple[str, ...] = ("wait", "run")
    ) -> dict[str, Row]:
        with self.pool.connection() as conn:
            found: dict[str, Row] = rollups.by_key(Lite(conn), dim, since, until, metrics)
        return found

    def since_ever(self, dim: str, metrics: tuple[str, ...] = ("wait", "run")) -> dict[str, Row]:
        with self.pool.connection() as conn:
            found: dict[str, Row] = rollups.since_ever(Lite(conn), dim, metrics)
        return found

    def tasks_by_state(self) -> dict[str, dict[str, int]]:
        with self.pool.connection() as conn:
            numbers = rollups.name_numbers(Lite(conn))
        return {name: n["states"] for name, n in numbers.items()}

    def counts(self) -> dict[str, int]:
        with self.pool.connection() as conn:
            return queries.counts(Lite(conn))

    def registry(self) -> list[Row]:
        with self.pool.connection() as conn:
            return fleet.registry(Lite(conn))

    def error_groups(
        self, name: str | None, since: float, until: float, limit: int = 50
    ) -> list[Row]:
        with self.pool.connection() as conn:
            return lists.error_groups(Lite(conn), name, since, until, limit)
