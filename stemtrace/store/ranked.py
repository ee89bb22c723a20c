"""The executions list sorted by run time or by queue wait, longest first.

A sort reads every row it ranks, so a sorted list is always bounded by a
first-seen window (the server sets one when none is given): the window's
rows come through a ``(…, seen_at DESC)`` index (``tasks_seen``,
``tasks_name``, ``tasks_state``, ``tasks_worker``) and only they are sorted,
SQLite's sorter keeping no more than a page of them.

A task not finished ranks by what it has taken so far: a running task by its
run time so far, a task sent and not started (:data:`stemtrace.core.states.WAITING`)
by its wait so far, both as of the first page's time. The cursor carries that time, so
that the pages after it rank every row the same way while the tasks go on.
Tasks with nothing to rank by (never sent, revoked before they started)
come last, newest id first.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Sequence
from typing import Any, Final

from stemtrace.core import states
from stemtrace.store.dbapi import Executes

SORTS: Final = ("runtime", "wait")
"""What a list may be sorted by: ``sort=runtime`` or ``sort=wait``."""

_IN_WAITING = ", ".join(f"'{state}'" for state in states.WAITING)
_KEYS: Final = {
    "runtime": "CASE WHEN runtime IS NOT NULL THEN max(runtime, 0.0)"
    f" WHEN state = '{states.STARTED}' AND started_at IS NOT NULL"
    " THEN max(? - started_at, 0.0) END",
    "wait": "CASE WHEN sent_at IS NULL THEN NULL"
    " WHEN started_at IS NOT NULL THEN max(started_at - sent_at, 0.0)"
    f" WHEN state IN ({_IN_WAITING}) THEN max(? - sent_at, 0.0) END",
}


class BadSortCursor(ValueError):
    """A cursor that is not the ``next_cursor`` of a page sorted the same way."""


def page_sql(
    columns: Sequence[str],
    where: Sequence[str],
    params: Sequence[Any],
    sort: str,
    cursor: str | None,
    limit: int,
    now: float | None = None,
) -> tuple[str, list[Any], float]:
    """The query of one sorted page (``limit + 1`` rows, the key last), its parameters,
    and the time the unfinished tasks are ranked as of."""
    if sort not in _KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    as_of = time.time() if now is None else now
    after: list[str] = []
    after_params: list[Any] = []
    if cursor is not None:
        key, task_id, as_of = decode(cursor, sort)
        if key is None:
            after.append("k IS NULL AND id < ?")
            after_params.append(task_id)
        else:
            after.append("(k < ? OR (k = ? AND id < ?) OR k IS NULL)")
            after_params.extend([key, key, task_id])
    inner = f"SELECT {', '.join(columns)}, {_KEYS[sort]} AS k FROM tasks"
    if where:
        inner += " WHERE " + " AND ".join(where)
    sql = f"SELECT * FROM ({inner})"
    if after:
        sql += " WHERE " + " AND ".join(after)
    sql += " ORDER BY k DESC, id DESC LIMIT ?"
    return sql, [as_of, *params, *after_params, limit + 1], as_of


def page(
    conn: Executes,
    columns: Sequence[str],
    where: Sequence[str],
    params: Sequence[Any],
    sort: str,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[Any, ...]], str | None]:
    """``limit`` rows (without their key) longest first, and the cursor of the next page."""
    sql, bound, as_of = page_sql(columns, where, params, sort, cursor, limit)
    rows = conn.execute(sql, bound).fetchall()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode(sort, last[-1], last[columns.index("id")], as_of)
    return [tuple(row[:-1]) for row in rows], next_cursor


def encode(sort: str, key: float | None, task_id: str, as_of: float) -> str:
    raw = json.dumps([sort, key, task_id, as_of], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, sort: str) -> tuple[float | None, str, float]:
    """``(key, id, as_of)`` of a cursor :func:`encode` made for the same ``sort``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, key, task_id, as_of = json.loads(raw)
        if (
            made_for == sort
            and (key is None or (_number(key) and math.isfinite(key)))
            and isinstance(task_id, str)
            and _number(as_of)
            and math.isfinite(as_of)
        ):
            task_id.encode("utf-8")  # a lone surrogate cannot be bound as a parameter
            return (None if key is None else float(key)), task_id, float(as_of)
    except (ValueError, TypeError, OverflowError):
        pass
    raise BadSortCursor(
        f"invalid cursor for sort={sort}: pass the next_cursor of a page sorted the same way"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
