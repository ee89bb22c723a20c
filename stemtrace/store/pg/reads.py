"""PostgreSQL's reads of one task and of the tasks list: SQLite's answers, row for row.

The SQL is SQLite's (:mod:`stemtrace.store.queries`) where the two dialects
agree, with PostgreSQL's placeholders; so is everything done to the rows
after (JSON decoded, history records merged and ordered, list fields). The
differences: ``q`` matches with ``ILIKE`` (SQLite's ``LIKE`` ignores the case
of ASCII letters) by scanning, as no text index is built yet, and ``sort``
(the ranked lists) is not supported yet.
"""

from __future__ import annotations

from typing import Any

import psycopg

from stemtrace.store.ingest import TASK_COLUMNS
from stemtrace.store.queries import (
    LIST_COLUMNS,
    TaskFilters,
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


def get_task(conn: Conn, task_id: str) -> Row | None:
    row = conn.execute(
        f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE id = %s", (task_id,)
    ).fetchone()
    return None if row is None else task_from_row(dict(zip(TASK_COLUMNS, row, strict=True)))


def task_events(conn: Conn, task_id: str) -> list[Row]:
    rows = conn.execute(
        "SELECT h.events FROM history AS h JOIN tasks AS t ON t.rowid = h.task_rowid"
        " WHERE t.id = %s ORDER BY h.written_at",
        (task_id,),
    ).fetchall()
    return history_events(task_id, [str(records) for (records,) in rows])


def children(conn: Conn, task_id: str, limit: int = 500) -> list[Row]:
    rows = conn.execute(
        f"SELECT {_LIST} FROM tasks WHERE parent_id = %s AND id != %s ORDER BY seen_at LIMIT %s",
        (task_id, task_id, limit),
    )
    return [list_row(row) for row in rows]


def list_tasks(
    conn: Conn, filters: TaskFilters, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """Newest first, ``limit`` rows and the cursor of the next page (SQLite's cursors)."""
    if filters.sort is not None:
        raise NotImplementedError("PostgreSQL store: sorted task lists are not built yet")
    rest, params = page_sql(filters, cursor, limit, like="ILIKE")
    found = conn.execute(_pg(f"SELECT {_LIST} FROM tasks{rest}"), params).fetchall()
    rows = [list_row(row) for row in found]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["seen_at"], rows[-1]["id"])
    return rows, next_cursor
