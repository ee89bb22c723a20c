"""Reads of the digests (:mod:`stemtrace.store.digests`): workflows, traces and error groups.

Each page walks a small index newest first (``flow_index``, ``trace_index``,
``error_hours``) and reads the few rows it shows through the tasks table's
indexes, never the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stemtrace.core import states
from stemtrace.store.dbapi import Executes
from stemtrace.store.queries import decode_cursor, encode_cursor

FLOW_OUTCOMES = ("running", "failed", "succeeded")
"""What the flows list filters on: any task still running; none running and some
broken (failed, revoked, rejected); none running and none broken."""

_BROKEN = ", ".join(f"'{s}'" for s in sorted(states.BROKEN))
_TERMINAL = ", ".join(f"'{s}'" for s in sorted(states.TERMINAL))
# The index counts a flow's tasks but the one whose id is its key: that one is read here,
# a look-up per flow walked (no such task: as if it succeeded). A scalar subquery, not
# EXISTS: PostgreSQL made EXISTS a hashed subplan over every unfinished task (a whole scan
# of every day's tasks: 390 ms for the failed flows of a million tasks).
_KEY_STATE = f"coalesce((SELECT state FROM tasks WHERE id = key LIMIT 1), '{states.SUCCESS}')"
_RUNNING = f"(running > 0 OR {_KEY_STATE} NOT IN ({_TERMINAL}))"
_FAILED = f"(failures > 0 OR {_KEY_STATE} IN ({_BROKEN}))"
# A chain is counted at its first link (it names the others in advance: ``planned``),
# a chord's header is the chord's, not a group; spawned is sent from a task's body.
# Conditions are counted with CASE, not summed as booleans: PostgreSQL reads it too.
_NAMED = "EXISTS (SELECT 1 FROM planned WHERE planned.id = tasks.id)"
_HAS_CHAIN = "chain IS NOT NULL AND chain NOT IN ('', '[]')"
_SHAPE = f"""SELECT COUNT(DISTINCT group_id)
        - COUNT(DISTINCT CASE WHEN chord_id IS NOT NULL THEN group_id END),
    COUNT(DISTINCT chord_id),
    SUM(CASE WHEN {_HAS_CHAIN} AND NOT {_NAMED} THEN 1 ELSE 0 END),
    SUM(CASE WHEN parent_id IS NOT NULL AND parent_id != id AND group_id IS NULL
        AND NOT {_NAMED} THEN 1 ELSE 0 END),
    MIN(coalesce(sent_at, seen_at)), MAX(finished_at),
    SUM(CASE WHEN state IN ({_BROKEN}) AND {_HAS_CHAIN} THEN 1 ELSE 0 END)
FROM tasks WHERE root_id = ? OR group_id = ?"""
_OUTCOME_SQL = {
    "running": _RUNNING,
    "failed": f"NOT {_RUNNING} AND {_FAILED}",
    "succeeded": f"NOT {_RUNNING} AND NOT {_FAILED}",
}


@dataclass(frozen=True)
class FlowFilters:
    name: str | None = None
    """The root task's name (a group's: any member's)."""
    outcome: str | None = None
    """One of :data:`FLOW_OUTCOMES`."""
    since: float | None = None
    until: float | None = None


def _window(since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    where, params = [], []
    if since is not None:
        where.append("first_seen >= ?")
        params.append(since)
    if until is not None:
        where.append("first_seen < ?")
        params.append(until)
    return where, params


def _after(cursor: str | None, key: str) -> tuple[list[str], list[Any]]:
    if cursor is None:
        return [], []
    seen, last = decode_cursor(cursor)
    return [f"(first_seen < ? OR (first_seen = ? AND {key} < ?))"], [seen, seen, last]


def list_flows(
    conn: Executes, filters: FlowFilters, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Workflows (flows of more than one task), newest first, and the next page's cursor."""
    where, params = _window(filters.since, filters.until)
    more, more_params = _after(cursor, "key")
    where += more
    params += more_params
    if filters.outcome is not None:
        where.append(_OUTCOME_SQL[filters.outcome])
    if filters.name is not None:
        where.append(
            "(EXISTS (SELECT 1 FROM tasks WHERE id = key AND name = ?)"
            " OR EXISTS (SELECT 1 FROM tasks WHERE group_id = key AND root_id = id AND name = ?))"
        )
        params += [filters.name, filters.name]
    rows = conn.execute(
        "SELECT key, first_seen, last_seen, tasks, failures, running FROM flow_index"
        f" WHERE tasks > 0 {''.join(' AND ' + w for w in where)}"
        " ORDER BY first_seen DESC, key DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    found = [_flow(conn, row) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return found, encode_cursor(last[1], last[0]) if last else None


def _flow(conn: Executes, row: Sequence[Any]) -> dict[str, Any]:
    key, first_seen, last_seen, tasks, failures, running = row
    root = conn.execute(
        "SELECT id, name, state, trace_id FROM tasks WHERE id = ?", (key,)
    ).fetchone()
    if root is not None:  # the task the flow is named after: not in the index
        tasks, failures, running = _with(root[2], tasks, failures, running)
    root = (
        root
        or conn.execute(
            "SELECT id, name, state, trace_id FROM tasks WHERE group_id = ?"
            " ORDER BY group_index, seen_at LIMIT 1",
            (key,),
        ).fetchone()
    )
    shape = conn.execute(_SHAPE, (key, key)).fetchone()
    groups, chords, chains, spawned, start, end, cut = shape
    if running:
        outcome = "running"
    elif cut:
        outcome = "broken"
    elif failures:
        outcome = "failed"
    else:
        outcome = "succeeded"
    return {
        "id": key,
        "root_id": root[0] if root else key,
        "name": root[1] if root else None,
        "root_state": root[2] if root else None,
        "trace_id": root[3] if root else None,
        "tasks": tasks,
        "failures": failures,
        "running": running,
        "outcome": outcome,
        "shape": {
            "groups": int(groups or 0),
            "chords": int(chords or 0),
            "chains": int(chains or 0),
            "spawned": int(spawned or 0),
        },
        "started_at": start if start is not None else first_seen,
        "finished_at": end if not running else None,
        "duration": (end - start)
        if not running and end is not None and start is not None
        else None,
        "first_seen": first_seen,
        "last_seen": last_seen,
    }


def _span(start: float | None, end: float | None, running: int) -> float | None:
    """Wall time from the first sent to the last finished, once nothing runs."""
    if running or start is None or end is None:
        return None
    return float(end - start)


def list_traces(
    conn: Executes,
    since: float | None,
    until: float | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Traces set on purpose or of more than one task, newest first, and the next cursor."""
    where, params = _window(since, until)
    more, more_params = _after(cursor, "trace_id")
    rows = conn.execute(
        "SELECT trace_id, first_seen, last_seen, tasks, failures, running FROM trace_index"
        f" WHERE tasks > 0 {''.join(' AND ' + w for w in where + more)}"
        " ORDER BY first_seen DESC, trace_id DESC LIMIT ?",
        (*params, *more_params, limit + 1),
    ).fetchall()
    found = [_trace(conn, row) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return found, encode_cursor(last[1], last[0]) if last else None


def _with(state: str, tasks: int, failures: int, running: int) -> tuple[int, int, int]:
    """An index's counts with one more task in ``state``."""
    return tasks + 1, failures + (state in states.BROKEN), running + (state not in states.TERMINAL)


def _trace(conn: Executes, row: Sequence[Any]) -> dict[str, Any]:
    trace_id, first_seen, last_seen, tasks, failures, running = row
    own = conn.execute("SELECT state FROM tasks WHERE id = ?", (trace_id,)).fetchone()
    if own is not None:  # the task the trace is named after: not in the index
        tasks, failures, running = _with(own[0], tasks, failures, running)
    first = conn.execute(
        "SELECT id, name FROM tasks WHERE trace_id = ? ORDER BY seen_at, id LIMIT 1", (trace_id,)
    ).fetchone()
    start, end = conn.execute(
        "SELECT MIN(coalesce(sent_at, seen_at)), MAX(finished_at) FROM tasks WHERE trace_id = ?",
        (trace_id,),
    ).fetchone()
    return {
        "trace_id": trace_id,
        "tasks": tasks,
        "failures": failures,
        "running": running,
        "first_task": {"id": first[0], "name": first[1]} if first else None,
        "started_at": start if start is not None else first_seen,
        "finished_at": end if not running else None,
        "duration": (end - start)
        if not running and end is not None and start is not None
        else None,
        "last_seen": last_seen,
    }


def error_groups(
    conn: Executes, name: str | None, since: float, until: float, limit: int = 50
) -> list[dict[str, Any]]:
    """Failures over ``[since, until)`` grouped by name and fingerprint, most first.

    Each group: ``name``, ``fingerprint``, ``exc_type``, ``message`` (normalized),
    ``count`` in the range, ``first_seen`` and ``last_seen`` (ever), the
    ``last_task_id`` to open, and ``hours``: ``[(hour start, failures)]`` in the range.
    """
    start = int(since // 3600) * 3600
    named = "AND h.name = ?" if name is not None else ""
    rows = conn.execute(
        f"""SELECT g.name, g.fingerprint, g.exc_type, g.message, g.first_seen, g.last_seen,
                g.last_task_id, SUM(h.n) AS count
            FROM error_hours h JOIN error_groups g
                ON g.name = h.name AND g.fingerprint = h.fingerprint
            WHERE h.t >= ? AND h.t < ? {named}
            GROUP BY g.name, g.fingerprint ORDER BY count DESC, g.last_seen DESC LIMIT ?""",
        (start, until, *([name] if name is not None else []), limit),
    ).fetchall()
    found = []
    for group_name, fingerprint, exc_type, message, first_seen, last_seen, task_id, count in rows:
        hours = conn.execute(
            "SELECT t, n FROM error_hours WHERE name = ? AND fingerprint = ? AND t >= ? AND t < ?"
            " ORDER BY t",
            (group_name, fingerprint, start, until),
        ).fetchall()
        found.append(
            {
                "name": group_name,
                "fingerprint": fingerprint,
                "exc_type": exc_type,
                "message": message,
                "count": int(count),
                "first_seen": first_seen,
                "last_seen": last_seen,
                "last_task_id": task_id,
                "hours": [(int(t), int(n)) for t, n in hours],
            }
        )
    return found
