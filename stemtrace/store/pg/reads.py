"""PostgreSQL's reads of one task and of the tasks list: SQLite's answers, row for row.

The SQL is SQLite's (:mod:`stemtrace.store.queries`) where the two dialects
agree, with PostgreSQL's placeholders; so is everything done to the rows
after (JSON decoded, history records merged and ordered, list fields). The
differences: ``q`` is matched and found as :mod:`stemtrace.store.pg.search`
says (SQLite's answers, through a ``pg_trgm`` index); and a list sorted by run
time or wait (:mod:`stemtrace.store.ranked`, its SQL and its cursors) is
respelled where the dialects part (:class:`_Ranked`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.adapt import Buffer
from psycopg.types.string import StrDumperUnknown

from stemtrace.store import ranked
from stemtrace.store.ingest import TASK_COLUMNS
from stemtrace.store.pg import search
from stemtrace.store.queries import (
    LIST_COLUMNS,
    BadCursor,
    TaskFilters,
    _where,
    decode_cursor,
    encode_cursor,
    history_events,
    list_row,
    page_sql,
    task_from_row,
)

Conn = psycopg.Connection[tuple[Any, ...]]
Row = dict[str, Any]

_LIST = ", ".join(LIST_COLUMNS)


def _pg(query: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's (the shared SQL has no other ``?`` or ``%``)."""
    return query.replace("%", "%%").replace("?", "%s")


class _NoNul(StrDumperUnknown):
    """A text parameter with its NUL characters as U+FFFD, as the writer stores them
    (:func:`stemtrace.store.pg.writer._no_nul`: PostgreSQL's text holds no NUL, SQLite's
    does): a task id, a filter or a cursor with a NUL finds what was stored with one,
    where psycopg refused the read (a 500 for ``/api/tasks/a%00b``)."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def reader(conn: Conn) -> psycopg.Cursor[tuple[Any, ...]]:
    """A cursor for a read: its text parameters as :class:`_NoNul` dumps them (only
    the reads: the writer cleans its rows itself, at C speed for the rest)."""
    cursor = conn.cursor()
    cursor.adapters.register_dumper(str, _NoNul)
    return cursor


def get_task(conn: Conn, task_id: str) -> Row | None:
    query = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE id = %s"
    row = reader(conn).execute(query, (task_id,)).fetchone()
    return None if row is None else task_from_row(dict(zip(TASK_COLUMNS, row, strict=True)))


def task_events(conn: Conn, task_id: str) -> list[Row]:
    query = (
        "SELECT h.events FROM history AS h JOIN tasks AS t ON t.rowid = h.task_rowid"
        " WHERE t.id = %s ORDER BY h.written_at"
    )
    rows = reader(conn).execute(query, (task_id,)).fetchall()
    return history_events(task_id, [str(records) for (records,) in rows])


def children(conn: Conn, task_id: str, limit: int = 500) -> list[Row]:
    rows = reader(conn).execute(
        f"SELECT {_LIST} FROM tasks WHERE parent_id = %s AND id != %s ORDER BY seen_at LIMIT %s",
        (task_id, task_id, limit),
    )
    return [list_row(row) for row in rows]


def list_tasks(
    conn: Conn, filters: TaskFilters, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """Newest first, ``limit`` rows and the cursor of the next page (SQLite's cursors)."""
    if filters.sort is not None:
        return _sorted(conn, filters, cursor, limit)
    if filters.q:
        query, params = _searched(filters, cursor, limit)
        # never prepared: the plan is made for this pattern (rare: the index; common: a scan)
        found = reader(conn).execute(_pg(query), params, prepare=False).fetchall()
    else:
        rest, params = page_sql(filters, cursor, limit)
        found = reader(conn).execute(_pg(f"SELECT {_LIST} FROM tasks{rest}"), params).fetchall()
    rows = [list_row(row) for row in found]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["seen_at"], rows[-1]["id"])
    return rows, next_cursor


def _searched(filters: TaskFilters, cursor: str | None, limit: int) -> tuple[str, list[Any]]:
    """A page of :func:`list_tasks` with ``q`` (:func:`stemtrace.store.pg.search.page`)."""
    where, params = _where(replace(filters, q=None))
    if cursor is not None:
        seen_at, task_id = decode_cursor(cursor)
        where.append("(seen_at < ? OR (seen_at = ? AND id < ?))")
        params.extend([seen_at, seen_at, task_id])
    half = [*params, *[search.pattern(str(filters.q))] * search.BOUND, limit + 1]
    halves = len(search.halves(filters.states))
    return search.page(_LIST, where, filters.states), half * halves + [limit + 1]


def _sorted(
    conn: Conn, filters: TaskFilters, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """A page sorted by :attr:`TaskFilters.sort`, as SQLite's (``queries._ranked``)."""
    if filters.since is None:  # a sort reads every row it ranks: never the whole table
        raise ValueError("a sorted list needs a window: give since")
    where, params = _where(replace(filters, q=None))
    if filters.q:
        where.append(search.MATCH)
        params.extend([search.pattern(filters.q)] * search.BOUND)
    try:
        found, next_cursor = ranked.page(
            _Ranked(conn), LIST_COLUMNS, where, params, str(filters.sort), cursor, limit
        )
    except ranked.BadSortCursor as exc:
        raise BadCursor(str(exc)) from None
    return [list_row(row) for row in found], next_cursor


class _Ranked:
    """Runs :func:`stemtrace.store.ranked.page_sql`'s statement in PostgreSQL's words.

    SQLite's two-argument ``max`` is ``GREATEST``; its ``DESC`` puts NULLs
    last, PostgreSQL's first (the tasks with nothing to rank by come last in
    both); and PostgreSQL 15 wants the ranked subquery named.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        spelled = sql.replace("max(", "GREATEST(")
        spelled = spelled.replace("ORDER BY k DESC,", "ORDER BY k DESC NULLS LAST,")
        spelled, named = _SUBQUERY_END.subn(r") AS ranked\1", spelled, count=1)
        if not named or spelled.count("NULLS LAST") != 1:
            raise ValueError(f"not a statement of ranked.page_sql: {sql}")
        return reader(self.conn).execute(_pg(spelled), parameters)


_SUBQUERY_END = re.compile(r"\)( WHERE \(?k | ORDER BY k DESC)")
"""Where the ranked subquery closes: before the cursor's condition or the order."""
