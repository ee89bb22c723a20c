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
reordered event counts nothing twice: :func:`tally` compares the rows a
batch touched with what they were counted as, in the batch's transaction.
A task is counted once its name is known. An outcome counts in the minute it
happened: sent at ``sent_at``, started at ``started_at``, succeeded or failed
at ``finished_at``, revoked and retried at the state's time; a queue wait
counts once both ends are known, whichever came first.

Retention forgets a task's place in ``task_counts`` and ``task_names``
exactly (:func:`forget`), and drops whole periods of
``rollups`` and ``rollup_hist`` older than its cutoff (:func:`prune`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from stemtrace.core import buckets, states
from stemtrace.store import digests

MINUTE = 60
HOUR = 3600
ALL_TIME = 0

SENT, STARTED, SUCCEEDED, FAILED, REVOKED, WAITED, RAN = (1 << n for n in range(7))
OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")
_BIT_COLUMN = {SENT: "sent", STARTED: "started", SUCCEEDED: "succeeded", FAILED: "failed",
               REVOKED: "revoked"}  # fmt: skip
_REVOKED_STATES = frozenset({states.REVOKED, states.REJECTED})

_TASK_COLUMNS = (
    "rowid", "name", "state", "queue", "worker", "sent_at", "started_at", "finished_at",
    "runtime", "retries", "state_ts", "seen_at", "id", "root_id", "group_id", "trace_id",
    "exc_type", "exc_message",
)  # fmt: skip
_COUNTED_COLUMNS = ("tally", "state", "retries", "flow", "trace")
TALLY_COLUMNS = (
    *_TASK_COLUMNS,
    "tally",
    "tally_state",
    "tally_retries",
    "tally_flow",
    "tally_trace",
)
"""What a row is counted from: the task's columns, then what it was counted as."""
_SELECT = (
    f"SELECT {', '.join(f't.{c}' for c in _TASK_COLUMNS)},"
    f" {', '.join(f'c.{c}' for c in _COUNTED_COLUMNS)}"
    " FROM tasks AS t LEFT JOIN task_tally AS c ON c.task_rowid = t.rowid"
    " WHERE t.rowid IN (SELECT value FROM json_each(?)) AND t.name IS NOT NULL"
)
_UPSERT_ROLLUP = f"""
INSERT INTO rollups (dim, key, res, t, {", ".join(OUTCOMES)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, res, t) DO UPDATE SET
{", ".join(f"{c} = {c} + excluded.{c}" for c in OUTCOMES)}
"""
_UPSERT_HIST = """
INSERT INTO rollup_hist (dim, key, metric, res, t, bucket, n) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, metric, res, t, bucket) DO UPDATE SET n = n + excluded.n
"""
_UPSERT_COUNT = """
INSERT INTO task_counts (name, state, n) VALUES (?, ?, ?)
ON CONFLICT (name, state) DO UPDATE SET n = n + excluded.n
"""
_UPSERT_NAME = """
INSERT INTO task_names (name, last_seen, retried) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    last_seen = max(coalesce(last_seen, excluded.last_seen), coalesce(excluded.last_seen, 0)),
    retried = retried + excluded.retried
"""
_DROP_EMPTY = "DELETE FROM task_counts WHERE name = ? AND state = ? AND n <= 0"
_SET_TALLY = "INSERT OR REPLACE INTO task_tally VALUES (?, ?, ?, ?, ?, ?)"

Key = tuple[str, str, int]  # dim, key, minute


def _minute(ts: Any) -> int | None:
    if ts is None:
        return None
    return int(ts // MINUTE) * MINUTE


class Deltas:
    """What one batch adds to the rollup tables.

    Counts are kept per cell (name, queue, worker, minute) as the rows are
    read, and spread over the dimensions (all, name, queue, worker) and the
    since-ever totals once, when written: a row costs a few dictionary
    updates, not one per dimension.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str | None, str | None, int], list[int]] = {}
        self.hist: dict[tuple[str, str | None, str | None, str, int, int], int] = {}
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.names: dict[str, list[Any]] = {}
        self.tallies: list[tuple[Any, ...]] = []
        self.digests = digests.Digests()

    def outcome(self, row: dict[str, Any], column: int, ts: Any, *, by_worker: bool) -> None:
        if ts is None:
            return
        worker = row["worker"] if by_worker else None
        key = (row["name"], row["queue"], worker, int(ts // MINUTE) * MINUTE)
        counts = self.cells.get(key)
        if counts is None:
            counts = self.cells[key] = [0] * len(OUTCOMES)
        counts[column] += 1

    def measure(self, row: dict[str, Any], metric: str, seconds: float, ts: Any) -> None:
        bucket = buckets.index(seconds)
        if bucket is None or ts is None:
            return
        key = (row["name"], row["queue"], row["worker"], metric, int(ts // MINUTE) * MINUTE, bucket)
        self.hist[key] = self.hist.get(key, 0) + 1

    def spread(self) -> tuple[dict[Key, list[int]], dict[tuple[Any, ...], int]]:
        """The cells' counts per dimension, key and period (minute and since ever)."""
        outcomes: dict[Key, list[int]] = {}
        for (name, queue, worker, minute), counts in self.cells.items():
            for dim_key in _dims(name, queue, worker):
                for t in (minute, ALL_TIME):
                    known = outcomes.get((*dim_key, t))
                    if known is None:
                        outcomes[(*dim_key, t)] = list(counts)
                    else:
                        for i, n in enumerate(counts):
                            known[i] += n
        hist: dict[tuple[Any, ...], int] = defaultdict(int)
        for (name, queue, worker, metric, minute, bucket), n in self.hist.items():
            for dim, key in _dims(name, queue, worker):
                hist[dim, key, metric, MINUTE, minute, bucket] += n
                hist[dim, key, metric, ALL_TIME, ALL_TIME, bucket] += n
        return outcomes, hist

    def write(self, conn: sqlite3.Connection) -> None:
        outcomes, hist = self.spread()
        if outcomes:
            conn.executemany(
                _UPSERT_ROLLUP,
                [
                    (dim, key, MINUTE if t else ALL_TIME, t, *counts)
                    for (dim, key, t), counts in outcomes.items()
                ],
            )
        if hist:
            conn.executemany(_UPSERT_HIST, [(*k, n) for k, n in hist.items()])
        if self.counts:
            conn.executemany(_UPSERT_COUNT, [(*k, n) for k, n in self.counts.items() if n])
            conn.executemany(_DROP_EMPTY, [k for k, n in self.counts.items() if n < 0])
        if self.names:
            conn.executemany(_UPSERT_NAME, [(name, *values) for name, values in self.names.items()])
        if self.tallies:
            conn.executemany(_SET_TALLY, self.tallies)
        self.digests.write(conn)


def _dims(name: str, queue: str | None, worker: str | None) -> list[tuple[str, str]]:
    found = [("all", ""), ("name", name)]
    if queue:
        found.append(("queue", queue))
    if worker:
        found.append(("worker", worker))
    return found


_OUTCOME_INDEX = {name: i for i, name in enumerate(OUTCOMES)}


def _facts(row: dict[str, Any]) -> int:
    """The outcome bits the row shows now."""
    state = row["state"]
    bits = 0
    if row["sent_at"] is not None:
        bits |= SENT
    if row["started_at"] is not None:
        bits |= STARTED
        if row["sent_at"] is not None:
            bits |= WAITED
    if state == states.SUCCESS:
        bits |= SUCCEEDED
    elif state == states.FAILURE:
        bits |= FAILED
    elif state in _REVOKED_STATES:
        bits |= REVOKED
    if row["runtime"] is not None and state in (states.SUCCESS, states.FAILURE):
        bits |= RAN
    return bits


def _count_row(deltas: Deltas, row: dict[str, Any]) -> None:
    """Add what ``row`` shows and was not counted yet; remember it on the row."""
    tally = row["tally"] or 0
    new = _facts(row) & ~tally
    _count_outcomes(deltas, row, new)
    if new & FAILED:
        deltas.digests.failure(row)
    # A task is listed in its flow and trace unless it is the one they are named after.
    task_id = row["id"]
    flow: str | None = digests.flow_key(row)
    flow = flow if flow != task_id else None
    trace = row["trace_id"] if row["trace_id"] != task_id else None
    was, now = digests.share(row["tally_state"]), digests.share(row["state"])
    moved = (flow, trace) != (row["tally_flow"], row["tally_trace"])
    if moved or (was != now and (flow is not None or trace is not None)):
        deltas.digests.add(row, flow, trace, was, now)
    listed = moved or row["tally_state"] != row["state"]
    retries = row["retries"] if isinstance(row["retries"], int) else 0
    counted_retries = row["tally_retries"] or 0
    _count_name(deltas, row, retried_now=retries > 0 and counted_retries == 0)
    if retries > counted_retries:
        ts = row["state_ts"] if row["state_ts"] is not None else row["seen_at"]
        for _ in range(min(retries - counted_retries, 1000)):
            deltas.outcome(row, _OUTCOME_INDEX["retried"], ts, by_worker=True)
    new_retries = max(retries, counted_retries)
    if new or listed or new_retries != counted_retries:
        deltas.tallies.append((row["rowid"], tally | new, row["state"], new_retries, flow, trace))


def _count_outcomes(deltas: Deltas, row: dict[str, Any], new: int) -> None:
    """The outcomes and measures of ``new``."""
    finished = row["finished_at"] if row["finished_at"] is not None else row["state_ts"]
    if new & SENT:
        deltas.outcome(row, _OUTCOME_INDEX["sent"], row["sent_at"], by_worker=False)
    if new & STARTED:
        deltas.outcome(row, _OUTCOME_INDEX["started"], row["started_at"], by_worker=True)
    for bit in (SUCCEEDED, FAILED):
        if new & bit:
            deltas.outcome(row, _OUTCOME_INDEX[_BIT_COLUMN[bit]], finished, by_worker=True)
    if new & REVOKED:
        deltas.outcome(row, _OUTCOME_INDEX["revoked"], row["state_ts"], by_worker=True)
    if new & WAITED:
        deltas.measure(row, "wait", row["started_at"] - row["sent_at"], row["started_at"])
    if new & RAN:
        deltas.measure(row, "run", row["runtime"], finished)


def _count_name(deltas: Deltas, row: dict[str, Any], *, retried_now: bool) -> None:
    """The name's last sighting, retried tasks and tasks by state."""
    name = row["name"]
    known = deltas.names.setdefault(name, [None, 0])
    if row["seen_at"] is not None and (known[0] is None or row["seen_at"] > known[0]):
        known[0] = row["seen_at"]
    known[1] += int(retried_now)
    if row["tally_state"] != row["state"]:
        if row["tally_state"] is not None:
            deltas.counts[name, row["tally_state"]] -= 1
        deltas.counts[name, row["state"]] += 1


def tally(conn: sqlite3.Connection, rowids: Iterable[int], dumps: Any) -> None:
    """Count what the rows ``rowids`` show and were not counted as; inside the writer's transaction.

    ``dumps`` encodes the rowids as a JSON array (the writer's own encoder).
    """
    deltas = Deltas()
    cursor = conn.execute(_SELECT, (dumps(list(rowids)),))
    for values in cursor.fetchall():
        _count_row(deltas, dict(zip(TALLY_COLUMNS, values, strict=True)))
    deltas.write(conn)


def tally_all(
    conn: sqlite3.Connection,
    chunk: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Count every stored task (the migration that builds the rollups of an existing store)."""
    total = int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    done = 0
    last = 0
    while True:
        rowids = [
            r[0]
            for r in conn.execute(
                "SELECT rowid FROM tasks WHERE rowid > ? ORDER BY rowid LIMIT ?", (last, chunk)
            )
        ]
        if not rowids:
            return done
        tally(conn, rowids, json.dumps)
        done += len(rowids)
        last = rowids[-1]
        if progress is not None:
            progress(done, total)


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
    conn.executemany(_UPSERT_COUNT, [(*k, n) for k, n in counts.items()])
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
