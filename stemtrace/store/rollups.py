"""Rollups: the whole-store numbers, kept up to date by the writer as events arrive.

Tables (migration 11):

* ``rollups`` - per dimension (``all``, ``name``, ``queue``, ``worker``), key,
  resolution (60: a minute, 3600: an hour) and period start: the tasks sent,
  started, succeeded, failed, retried and revoked in that period.
* ``rollup_hist`` - the same keys per metric (``wait``: sent to started,
  ``run``: the run time of a finished task) and bucket of
  :mod:`stemtrace.core.buckets`: how many fell in it.
* In both, resolution 0 (period 0) holds the totals since the store began:
  counters that only grow (retention leaves them), for ``/metrics`` and the
  registry's run times.
* ``task_counts`` - per task name and state, how many stored tasks are in
  it now; ``task_names`` - per name, when last seen and how many of its
  tasks retried. The registry reads these instead of scanning ``tasks``.
* ``rollup_state`` - up to when minutes were folded into hours.

Each task remembers what it was counted as in ``task_tally`` (by the task's
rowid: ``tally``, a bit per outcome counted; the ``state``, ``retries``,
``flow`` and ``trace`` it counts under; a narrow table, so that keeping it
does not rewrite the wide task row), so a re-delivered or
reordered event counts nothing twice: :func:`stemtrace.store.tally.tally`
compares the rows a batch touched with what they were counted as, in the
batch's transaction.
A task is counted once its name is known. An outcome counts in the minute it
happened: sent at ``sent_at``, started at ``started_at``, succeeded or failed
at ``finished_at``, revoked and retried at the state's time; a queue wait
counts once both ends are known, whichever came first.

Retention forgets a task's place in ``task_counts`` and ``task_names``
exactly (:func:`forget`), and drops whole periods of
``rollups`` and ``rollup_hist`` older than its cutoff (:func:`prune`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from stemtrace.core import buckets, states
from stemtrace.store import digests

MINUTE = 60
HOUR = 3600
ALL_TIME = 0

SENT, STARTED, SUCCEEDED, FAILED, REVOKED, WAITED, RAN = (1 << n for n in range(7))
OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")
REVOKED_STATES = frozenset({states.REVOKED, states.REJECTED})
"""The states counted as revoked."""

UPSERT_ROLLUP = f"""
INSERT INTO rollups (dim, key, res, t, {", ".join(OUTCOMES)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, res, t) DO UPDATE SET
{", ".join(f"{c} = {c} + excluded.{c}" for c in OUTCOMES)}
"""
UPSERT_HIST = """
INSERT INTO rollup_hist (dim, key, metric, res, t, bucket, n) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, metric, res, t, bucket) DO UPDATE SET n = n + excluded.n
"""
UPSERT_COUNT = """
INSERT INTO task_counts (name, state, n) VALUES (?, ?, ?)
ON CONFLICT (name, state) DO UPDATE SET n = n + excluded.n
"""
UPSERT_NAME = """
INSERT INTO task_names (name, last_seen, retried) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    last_seen = max(coalesce(last_seen, excluded.last_seen), coalesce(excluded.last_seen, 0)),
    retried = retried + excluded.retried
"""
DROP_EMPTY = "DELETE FROM task_counts WHERE name = ? AND state = ? AND n <= 0"
SET_TALLY = "INSERT OR REPLACE INTO task_tally VALUES (?, ?, ?, ?, ?, ?)"


_FORGET_SELECT = (
    "SELECT t.name, c.retries, c.state, c.flow, c.trace"
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid"
    " WHERE c.task_rowid IN (SELECT value FROM json_each(?))"
)


def forget(conn: sqlite3.Connection, rowids: Sequence[int], dumps: Any) -> None:
    """Take the rows about to be deleted out of the per-name numbers (retention)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    retried: dict[str, int] = defaultdict(int)
    rows = []
    ids = dumps(list(rowids))
    for name, retries, *values in conn.execute(_FORGET_SELECT, (ids,)):
        row = dict(zip(digests.FORGET_COLUMNS, values, strict=True))
        rows.append(row)
        counts[name, row["tally_state"]] -= 1
        if retries:
            retried[name] -= 1
    digests.forget(conn, rows)
    conn.executemany(UPSERT_COUNT, [(*k, n) for k, n in counts.items()])
    conn.executemany(
        "UPDATE task_names SET retried = retried + ? WHERE name = ?",
        [(n, name) for name, n in retried.items()],
    )
    conn.execute("DELETE FROM task_counts WHERE n <= 0")
    conn.execute(
        "DELETE FROM task_tally WHERE task_rowid IN (SELECT value FROM json_each(?))", (ids,)
    )


def prune(conn: sqlite3.Connection, before: float) -> None:
    """Drop the periods of rollups that end before ``before`` (retention's cutoff)."""
    conn.execute("DELETE FROM rollups WHERE res > 0 AND t + res <= ?", (before,))
    digests.prune(conn, before)
    conn.execute("DELETE FROM rollup_hist WHERE res > 0 AND t + res <= ?", (before,))


def fold(conn: sqlite3.Connection, before: float) -> int:
    """Fold the minutes of the hours that ended before ``before`` into those hours.

    Returns how many minute rows went. Reads then see the hour where the
    minutes were; percentiles and counts over any range that covers whole
    hours are unchanged.
    """
    edge = int(before // HOUR) * HOUR
    hour = f"(t / {HOUR}) * {HOUR}"
    sums = ", ".join(f"SUM({c})" for c in OUTCOMES)
    conn.execute(
        f"""INSERT INTO rollups (dim, key, res, t, {", ".join(OUTCOMES)})
            SELECT dim, key, {HOUR}, {hour}, {sums} FROM rollups
            WHERE res = {MINUTE} AND t < ? GROUP BY dim, key, {hour}
            ON CONFLICT (dim, key, res, t) DO UPDATE SET
            {", ".join(f"{c} = {c} + excluded.{c}" for c in OUTCOMES)}""",
        (edge,),
    )
    conn.execute(
        f"""INSERT INTO rollup_hist (dim, key, metric, res, t, bucket, n)
            SELECT dim, key, metric, {HOUR}, {hour}, bucket, SUM(n) FROM rollup_hist
            WHERE res = {MINUTE} AND t < ? GROUP BY dim, key, metric, {hour}, bucket
            ON CONFLICT (dim, key, metric, res, t, bucket) DO UPDATE SET n = n + excluded.n""",
        (edge,),
    )
    gone = conn.execute("DELETE FROM rollups WHERE res = ? AND t < ?", (MINUTE, edge)).rowcount
    conn.execute("DELETE FROM rollup_hist WHERE res = ? AND t < ?", (MINUTE, edge))
    conn.execute("UPDATE rollup_state SET folded_before = max(folded_before, ?)", (edge,))
    return int(gone)


DIMENSIONS = ("all", "name", "queue", "worker")


def series(
    conn: sqlite3.Connection, since: float, until: float, step: int, dim: str, key: str
) -> list[dict[str, Any]]:
    """Outcomes and wait and run-time histograms per ``step`` seconds over ``[since, until)``.

    Periods folded into hours land in the step holding their start: a step
    shorter than an hour shows a folded hour whole in its first step.
    """
    start = int(since // step) * step
    points: dict[int, dict[str, Any]] = {
        t: {"t": t, **dict.fromkeys(OUTCOMES, 0), "wait": [0] * buckets.COUNT,
            "run": [0] * buckets.COUNT}
        for t in range(start, int(until), step)
    }  # fmt: skip
    rows = conn.execute(
        f"SELECT t, {', '.join(OUTCOMES)} FROM rollups"
        " WHERE dim = ? AND key = ? AND res > 0 AND t >= ? AND t < ?",
        (dim, key, start, until),
    )
    for t, *counts in rows:
        point = points.get(start + (int(t) - start) // step * step)
        if point is not None:
            for name, count in zip(OUTCOMES, counts, strict=True):
                point[name] += count
    hist_rows = conn.execute(
        "SELECT t, metric, bucket, n FROM rollup_hist"
        " WHERE dim = ? AND key = ? AND res > 0 AND t >= ? AND t < ?",
        (dim, key, start, until),
    )
    for t, metric, bucket, n in hist_rows:
        point = points.get(start + (int(t) - start) // step * step)
        if point is not None and metric in ("wait", "run") and 0 <= bucket < buckets.COUNT:
            point[metric][bucket] += n
    return list(points.values())


def name_numbers(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per task name: tasks by state, retried tasks, last seen, all-time run-time counts."""
    found: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return found.setdefault(
            name,
            {"states": {}, "retried": 0, "last_seen": None, "run": [0] * buckets.COUNT},
        )

    for name, state, n in conn.execute("SELECT name, state, n FROM task_counts WHERE n > 0"):
        entry(name)["states"][state] = n
    for name, last_seen, retried in conn.execute("SELECT name, last_seen, retried FROM task_names"):
        if name in found:
            found[name]["last_seen"] = last_seen
            found[name]["retried"] = retried
    for name, bucket, n in conn.execute(
        "SELECT key, bucket, n FROM rollup_hist WHERE dim = 'name' AND metric = 'run'"
        " AND res = 0 AND n > 0"
    ):
        if name in found and 0 <= bucket < buckets.COUNT:
            found[name]["run"][bucket] = n
    return found


def by_key(conn: sqlite3.Connection, dim: str, since: float, until: float) -> dict[str, Any]:
    """Per key of ``dim`` over ``[since, until)``: outcome totals and wait and run histograms."""
    start = int(since // MINUTE) * MINUTE
    return _by_key(conn, dim, "res > 0 AND t >= ? AND t < ?", (dim, start, until))


def since_ever(conn: sqlite3.Connection, dim: str) -> dict[str, Any]:
    """Per key of ``dim``: the counters since the store began (they only grow)."""
    return _by_key(conn, dim, "res = 0", (dim,))


def _by_key(
    conn: sqlite3.Connection, dim: str, where: str, params: tuple[Any, ...]
) -> dict[str, Any]:
    found: dict[str, dict[str, Any]] = {}

    def entry(key: str) -> dict[str, Any]:
        return found.setdefault(
            key,
            {**dict.fromkeys(OUTCOMES, 0), "wait": [0] * buckets.COUNT,
             "run": [0] * buckets.COUNT},
        )  # fmt: skip

    rows = conn.execute(
        f"SELECT key, {', '.join(f'SUM({c})' for c in OUTCOMES)} FROM rollups"
        f" WHERE dim = ? AND {where} GROUP BY key",
        params,
    )
    for key, *counts in rows:
        entry(key).update(zip(OUTCOMES, counts, strict=True))
    hist_rows = conn.execute(
        "SELECT key, metric, bucket, SUM(n) FROM rollup_hist"
        f" WHERE dim = ? AND {where} GROUP BY key, metric, bucket",
        params,
    )
    for key, metric, bucket, n in hist_rows:
        if metric in ("wait", "run") and 0 <= bucket < buckets.COUNT:
            entry(key)[metric][bucket] += n
    return found
