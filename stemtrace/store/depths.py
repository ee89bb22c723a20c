"""The queues: the broker's counts as polled, and the tasks waiting in them or for their time.

Tables (migration 12): ``queue_depths`` holds each queue's count as last read
(messages, consumers where the broker says, or why it could not be read);
``queue_depth_minutes`` the largest count of each minute, for the backlog
chart, pruned with the rollups' minutes (:func:`prune`).

What stemtrace itself knows of the queues is read from the ``tasks_inflight``
index (the tasks not finished yet: a few thousand even in a store of
millions), never by a scan of ``tasks``: each query repeats the index's
condition verbatim and names the index, so SQLite refuses to run it any
other way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from stemtrace.core.coerce import moment
from stemtrace.store.dbapi import Executes
from stemtrace.store.migrations import HISTORY_RECORD, INFLIGHT_STATES

MINUTE = 60
INFLIGHT = f"tasks INDEXED BY tasks_inflight WHERE state IN ({INFLIGHT_STATES})"
"""The in-flight tasks, through their index (its condition must be repeated verbatim)."""

Sample = tuple[int | None, int | None, str | None]
"""``(messages, consumers, error)`` of one queue as the broker answered."""


def record(conn: sqlite3.Connection, samples: Mapping[str, Sample], at: float) -> None:
    """The counts read at ``at``: each queue's latest, and its minute's largest."""
    minute = int(at // MINUTE) * MINUTE
    conn.executemany(
        "INSERT INTO queue_depths (queue, messages, consumers, error, at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (queue) DO UPDATE SET messages = excluded.messages,"
        " consumers = excluded.consumers, error = excluded.error, at = excluded.at",
        [(queue, *sample, at) for queue, sample in samples.items()],
    )
    conn.executemany(
        "INSERT INTO queue_depth_minutes (queue, t, messages) VALUES (?, ?, ?)"
        " ON CONFLICT (queue, t) DO UPDATE SET messages = max(messages, excluded.messages)",
        [(queue, minute, s[0]) for queue, s in samples.items() if s[0] is not None],
    )


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Forget the minutes older than ``before`` (the rollups' minute horizon)."""
    return int(conn.execute("DELETE FROM queue_depth_minutes WHERE t < ?", (before,)).rowcount)


def latest(conn: Executes) -> dict[str, dict[str, Any]]:
    """Per queue: ``messages``, ``consumers``, ``error`` and ``at`` as last read."""
    rows = conn.execute("SELECT queue, messages, consumers, error, at FROM queue_depths")
    return {
        queue: {"messages": messages, "consumers": consumers, "error": error, "at": at}
        for queue, messages, consumers, error, at in rows
    }


def backlog(
    conn: Executes, queues: list[str], since: float, step: int = MINUTE
) -> dict[str, list[tuple[int, int]]]:
    """Per queue, ``(t, largest count in [t, t + step))`` since ``since``, oldest first."""
    step = max(MINUTE, int(step) // MINUTE * MINUTE)
    start = int(since // step) * step
    found: dict[str, list[tuple[int, int]]] = {}
    for queue in queues:
        rows = conn.execute(
            f"SELECT t / {step} * {step}, MAX(messages) FROM queue_depth_minutes"
            " WHERE queue = ? AND t >= ? GROUP BY 1 ORDER BY 1",
            (queue, start),
        )
        found[queue] = [(int(t), int(n)) for t, n in rows]
    return found


def known(conn: Executes) -> list[str]:
    """Every queue stemtrace knows of: workers' subscriptions and task definitions first
    (each part in name order), then the other queues tasks were sent to (the rollups'
    all-time keys: one row per queue)."""
    declared = {
        str(q)
        for (q,) in conn.execute(
            "SELECT value FROM workers, json_each(CASE WHEN json_valid(workers.queues)"
            " AND json_type(workers.queues) = 'array' THEN workers.queues ELSE '[]' END)"
            " WHERE json_each.type = 'text'"
            " UNION SELECT queue FROM registry WHERE queue IS NOT NULL"
        )
        if q
    }
    sent = conn.execute("SELECT key FROM rollups WHERE dim = 'queue' AND res = 0 AND t = 0")
    return sorted(declared) + sorted({str(q) for (q,) in sent if q} - declared)


def waiting(conn: Executes) -> dict[str, dict[str, Any]]:
    """Per queue, the tasks sent and not received (``PENDING``): how many, and the oldest.

    SQLite takes the bare columns of a ``MIN()`` aggregate from the row holding the minimum.
    """
    rows = conn.execute(
        f"SELECT queue, COUNT(*), MIN(sent_at), id, name FROM {INFLIGHT}"
        " AND state = 'PENDING' GROUP BY queue"
    )
    return {
        queue or "": {"count": n, "oldest_sent_at": sent_at, "oldest_id": task_id,
                      "oldest_name": name}
        for queue, n, sent_at, task_id, name in rows
    }  # fmt: skip


_KIND, _RETRIES, _TS, _RETRY_AT = (
    HISTORY_RECORD.index(f) for f in ("kind", "retries", "ts", "retry_at")
)
LAST_RETRY = (
    f"SELECT json_extract(r.value, '$[{_RETRY_AT}]') FROM history, json_each(history.events) r"
    f" WHERE history.task_rowid = tasks.rowid AND json_extract(r.value, '$[{_KIND}]') = 'retry'"
    f" ORDER BY json_extract(r.value, '$[{_RETRIES}]') DESC, json_extract(r.value, '$[{_TS}]') DESC"
    " LIMIT 1"
)
"""When a task's latest retry said its next attempt is due (of the outer ``tasks`` row): the
task row keeps the first ETA it saw, which after a second retry is the first retry's,
long past."""
SCHEDULED_COLUMNS = "id, name, state, queue, worker, eta, retries, sent_at, received_at"
SCHEDULED = (
    f"SELECT {SCHEDULED_COLUMNS}, CASE WHEN state = 'RETRY' THEN ({LAST_RETRY}) END"
    f" FROM {INFLIGHT} AND state IN ('PENDING', 'RECEIVED', 'RETRY') AND eta IS NOT NULL"
)
"""The tasks with an ETA not started yet, each with its latest retry's due time: one
statement (a look-up per retrying task cost PostgreSQL a round trip each, 84 ms for the
queues page's 500 on a million tasks)."""


def scheduled(conn: Executes, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Tasks with an ETA not started yet (sent, held by a worker, or waiting to retry).

    ``(how many, the first limit of them, the soonest due first)``; each with
    ``due`` in epoch seconds (``None`` when the ETA cannot be read: listed last).
    """
    names = [name.strip() for name in SCHEDULED_COLUMNS.split(",")]
    rows = []
    for *values, retry_at in conn.execute(SCHEDULED):
        row = dict(zip(names, values, strict=True))
        retried = float(retry_at) if isinstance(retry_at, int | float) else None
        row["due"] = retried if retried is not None else moment(row["eta"])
        rows.append(row)
    rows.sort(key=lambda r: (r["due"] is None, r["due"] or 0.0, r["id"]))
    return len(rows), rows[:limit]
