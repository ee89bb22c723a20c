"""One worker's page: its row, its heartbeat gaps, and its tasks, each read through an index.

* running now: ``tasks_running`` (the worker's started tasks);
* held and scheduled: ``tasks_inflight`` (the tasks not finished, a few
  thousand even in a store of millions), received or waiting to retry on
  this worker; a task due later (an ETA, or a retry's next attempt) is
  scheduled, one not due is held (prefetched behind what runs);
* recent failures: ``tasks_state`` (failures, newest first), from ``since``;
* gaps: ``worker_gaps`` by its key (hostname, start).
"""

from __future__ import annotations

from typing import Any, Final

from stemtrace.core.coerce import moment
from stemtrace.store import fleet
from stemtrace.store.dbapi import Executes
from stemtrace.store.migrations import HISTORY_RECORD, INFLIGHT_STATES

LISTED: Final = 100
"""Tasks listed per kind (running, held, scheduled) at most."""
FAILURES: Final = 20
"""Recent failures listed at most."""

_RETRY_AT = HISTORY_RECORD.index("retry_at")
_KIND = HISTORY_RECORD.index("kind")
_TS = HISTORY_RECORD.index("ts")

RUNNING = (
    "SELECT id, name, started_at, received_at, retries FROM tasks INDEXED BY tasks_running"
    " WHERE worker = ? AND state = 'STARTED' ORDER BY seen_at DESC LIMIT ?"
)
WAITING = (
    "SELECT id, name, state, queue, eta, retries, sent_at, received_at, state_ts, rowid"
    " FROM tasks INDEXED BY tasks_inflight"
    f" WHERE state IN ({INFLIGHT_STATES}) AND state IN ('RECEIVED', 'RETRY') AND worker = ?"
    " ORDER BY sent_at LIMIT ?"
)
FAILED = (
    "SELECT id, name, exc_type, exc_message, finished_at, seen_at"
    " FROM tasks INDEXED BY tasks_state"
    " WHERE state = 'FAILURE' AND seen_at >= ? AND worker = ? ORDER BY seen_at DESC LIMIT ?"
)
GAPS = (
    "SELECT start, end FROM worker_gaps WHERE hostname = ? AND end > ? AND start < ? ORDER BY start"
)
NEXT_ATTEMPT = (
    f"SELECT json_extract(r.value, '$[{_RETRY_AT}]') FROM history AS h, json_each(h.events) AS r"
    f" WHERE h.task_rowid = ? AND json_extract(r.value, '$[{_KIND}]') = 'retry'"
    f" ORDER BY json_extract(r.value, '$[{_TS}]') DESC LIMIT 1"
)


def worker(
    conn: Executes, hostname: str, since: float, now: float, timeout: float = 60.0
) -> dict[str, Any] | None:
    """The worker's row as :func:`stemtrace.store.fleet.workers` has it, and its page's lists.

    ``gaps`` are those overlapping ``[since, now]``; ``failures`` those first
    seen since ``since``, newest first.
    """
    found = fleet.workers(conn, now, timeout, hostname)
    if not found:
        return None
    row = found[0]
    row["running"] = _rows(conn, RUNNING, (hostname, LISTED))
    held, scheduled = waiting(conn, hostname)
    row["held"] = held
    row["scheduled"] = scheduled
    row["failures"] = _rows(conn, FAILED, (since, hostname, FAILURES))
    row["gaps"] = [
        {"start": start, "end": end} for start, end in conn.execute(GAPS, (hostname, since, now))
    ]
    return row


def waiting(conn: Executes, hostname: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(held, scheduled)`` on ``hostname``: received and not started, or waiting to retry.

    Scheduled ones carry ``due`` (epoch seconds), soonest first: the ETA, or
    for a retried task the time its retry named for the next attempt.
    """
    held: list[dict[str, Any]] = []
    scheduled: list[dict[str, Any]] = []
    for row in _rows(conn, WAITING, (hostname, 2 * LISTED)):
        rowid = row.pop("rowid")
        due = None
        if row["state"] == "RETRY" or row["retries"]:
            found = conn.execute(NEXT_ATTEMPT, (rowid,)).fetchone()
            due = _number(found[0]) if found else None
        if due is None:
            due = moment(row["eta"])
        row["due"] = due
        if due is None and row["state"] == "RECEIVED":
            held.append(row)
        else:
            scheduled.append(row)
    scheduled.sort(key=lambda r: (r["due"] is None, r["due"] or 0.0, r["id"]))
    return held[:LISTED], scheduled[:LISTED]


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _rows(conn: Executes, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]
