"""The tasks not finished yet, read through the ``tasks_inflight`` index (migration 12).

A few thousand rows even in a store of millions: what the problems, the
scheduled list and a task's "why is it waiting" are found from.
"""

from __future__ import annotations

from typing import Any, Final

from stemtrace.store.dbapi import Executes
from stemtrace.store.migrations import INFLIGHT_COLUMNS, INFLIGHT_STATES

COLUMNS: Final = tuple(c.strip() for c in INFLIGHT_COLUMNS.split(","))
"""The columns the ``tasks_inflight`` index covers: reading them never touches the table."""


def inflight(conn: Executes, limit: int) -> list[dict[str, Any]]:
    """The tasks in flight (sent, received, started, waiting to retry): of each state at
    most a quarter of ``limit``, the longest sent first, so that a flood of tasks waiting
    in one state never hides the tasks of another (a started task on a lost worker)."""
    found: list[dict[str, Any]] = []
    for state in STATES:
        cursor = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM tasks INDEXED BY tasks_inflight"
            f" WHERE state IN ({INFLIGHT_STATES}) AND state = ? ORDER BY sent_at LIMIT ?",
            (state, max(limit // len(STATES), 1)),
        )
        found.extend(dict(zip(COLUMNS, row, strict=True)) for row in cursor)
    return found


STATES: Final = tuple(s.strip(" '") for s in INFLIGHT_STATES.split(","))


def ahead_of(conn: Executes, queue: str, sent_at: float) -> int:
    """Tasks sent to ``queue`` before ``sent_at`` and not received yet, as stemtrace saw them."""
    row = conn.execute(
        "SELECT COUNT(*) FROM tasks INDEXED BY tasks_inflight"
        f" WHERE state IN ({INFLIGHT_STATES}) AND state = 'PENDING' AND sent_at < ?"
        " AND queue = ?",
        (sent_at, queue),
    ).fetchone()
    return int(row[0])


def time_limits(conn: Executes) -> dict[str, tuple[float | None, float | None]]:
    """Per defined task name: its soft and hard time limits (names with either only)."""
    return {
        name: (soft, hard)
        for name, soft, hard in conn.execute(
            "SELECT name, soft_time_limit, time_limit FROM registry"
            " WHERE soft_time_limit IS NOT NULL OR time_limit IS NOT NULL"
        )
    }
