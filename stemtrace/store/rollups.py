"""Rollups: the whole-store numbers, kept up to date by the writer as events arrive.

Tables (migration 11):

* ``rollups`` - per dimension (``all``, ``name``, ``queue``, ``worker``), key,
  resolution (60: a minute, 3600: an hour) and period start: the tasks sent,
  started, succeeded, failed, retried and revoked in that period.
* ``rollup_hist`` - the same keys per metric (``wait``: sent to started,
  ``run``: the run time of a finished task): how many fell in each bucket of
  :mod:`stemtrace.core.buckets`, all of a period's buckets in one value
  (``counts``: :func:`stemtrace.core.buckets.pack`'s bytes in SQLite, a
  ``bigint[]`` in PostgreSQL; migration 13 packed the row per bucket of before),
  so a batch updates a row per cell, not per bucket. SQLite adds two values
  with :data:`HIST_ADD`, a function each connection registers (:func:`register`).
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

import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from stemtrace.core import buckets, states
from stemtrace.store import digests
from stemtrace.store.dbapi import Executes

MINUTE = 60
HOUR = 3600
ALL_TIME = 0

SENT, STARTED, SUCCEEDED, FAILED, REVOKED, WAITED, RAN = (1 << n for n in range(7))
OUTCOMES = ("sent", "started", "succeeded", "failed", "retried", "revoked")
DIMENSIONS = ("all", "name", "queue", "worker")
_DIMS = ", ".join(f"'{d}'" for d in DIMENSIONS)  # the (dim, res, t) indexes lead with dim
REVOKED_STATES = frozenset({states.REVOKED, states.REJECTED})
"""The states counted as revoked."""

UPSERT_ROLLUP = f"""
INSERT INTO rollups (dim, key, res, t, {", ".join(OUTCOMES)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, res, t) DO UPDATE SET
{", ".join(f"{c} = {c} + excluded.{c}" for c in OUTCOMES)}
"""
HIST_ADD = "stemtrace_hist_add"
"""SQLite's function adding two stored histograms (:func:`stemtrace.core.buckets.add_packed`)."""
UPSERT_HIST = f"""
INSERT INTO rollup_hist (dim, key, metric, res, t, counts) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (dim, key, res, t, metric) DO UPDATE SET counts = {HIST_ADD}(counts, excluded.counts)
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


HIST_TABLE = """CREATE TABLE rollup_hist (
            dim TEXT NOT NULL, key TEXT NOT NULL, metric TEXT NOT NULL, res INTEGER NOT NULL,
            t INTEGER NOT NULL, counts BLOB NOT NULL, PRIMARY KEY (dim, key, res, t, metric)
        ) WITHOUT ROWID"""
"""``rollup_hist`` as migration 11 makes it, since migration 13 (:func:`pack_histograms`)."""
HIST_INDEX = "CREATE INDEX rollup_hist_by_time ON rollup_hist (dim, res, t)"


def pack_histograms(conn: sqlite3.Connection) -> None:
    """``rollup_hist`` with a row per cell (dimension, key, period, metric), its bucket
    counts packed in one value (:func:`stemtrace.core.buckets.pack`), where a row per
    bucket was: counting a batch wrote about 18 rows per cell.

    Nothing to do for a store whose m011 already made this layout.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(rollup_hist)")}
    if "counts" in columns:
        return
    conn.execute("ALTER TABLE rollup_hist RENAME TO rollup_hist_by_bucket")
    conn.execute("DROP INDEX rollup_hist_by_time")
    conn.execute(HIST_TABLE)
    cells = conn.execute(
        "SELECT dim, key, metric, res, t, bucket, n FROM rollup_hist_by_bucket"
        " ORDER BY dim, key, res, t, metric"
    )
    conn.executemany(
        "INSERT INTO rollup_hist (dim, key, metric, res, t, counts) VALUES (?, ?, ?, ?, ?, ?)",
        ((*cell, buckets.pack(counts)) for *cell, counts in _packed_cells(cells)),
    )
    conn.execute("DROP TABLE rollup_hist_by_bucket")
    conn.execute(HIST_INDEX)


def _packed_cells(
    rows: Iterable[tuple[str, str, str, int, int, int, int]],
) -> Iterator[tuple[str, str, str, int, int, list[int]]]:
    """Rows of ``(dim, key, metric, res, t, bucket, n)`` in cell order as one row per cell
    with its :data:`~stemtrace.core.buckets.COUNT` counts (m013). A bucket out of the
    layout, or a count not above 0, counts nothing, as the reads left it."""
    cell: tuple[str, str, str, int, int] | None = None
    counts = [0] * buckets.COUNT
    for dim, key, metric, res, t, bucket, n in rows:
        if (dim, key, metric, res, t) != cell:
            if cell is not None:
                yield (*cell, counts)
            cell, counts = (dim, key, metric, res, t), [0] * buckets.COUNT
        if 0 <= bucket < buckets.COUNT and n > 0:
            counts[bucket] = min(counts[bucket] + n, buckets.MAX_COUNT)
    if cell is not None:
        yield (*cell, counts)


def register(conn: sqlite3.Connection) -> None:
    """The functions the rollups' statements call (:data:`HIST_ADD`), on a connection."""
    conn.create_function(HIST_ADD, 2, buckets.add_packed, deterministic=True)


def _add(total: list[int], value: object) -> None:
    """A stored histogram added to ``total``; one that is not a histogram counts nothing."""
    with contextlib.suppress(ValueError):
        buckets.add_into(total, value)


_FORGET_SELECT = (
    "SELECT t.name, c.retries, c.state, c.flow, c.trace"
    " FROM task_tally AS c JOIN tasks AS t ON t.rowid = c.task_rowid"
    " WHERE c.task_rowid IN (SELECT value FROM json_each(?))"
)


def forget(conn: sqlite3.Connection, rowids: Sequence[int], dumps: Any) -> None:
    """Take the rows about to be deleted out of the per-name numbers (retention)."""
    ids = dumps(list(rowids))
    counts, retried, listed = forgotten(conn.execute(_FORGET_SELECT, (ids,)))
    digests.forget(conn, listed)
    conn.executemany(UPSERT_COUNT, counts)
    conn.executemany("UPDATE task_names SET retried = retried + ? WHERE name = ?", retried)
    conn.execute("DELETE FROM task_counts WHERE n <= 0")
    conn.execute(
        "DELETE FROM task_tally WHERE task_rowid IN (SELECT value FROM json_each(?))", (ids,)
    )


def forgotten(
    rows: Iterable[Sequence[Any]],
) -> tuple[list[tuple[str, str, int]], list[tuple[int, str]], list[dict[str, Any]]]:
    """What forgetting tasks takes out, from their ``(name, retries, state, flow, trace)``
    as counted: ``task_counts`` rows to add, ``(retried to add, name)``, and the rows
    :func:`stemtrace.store.digests.forget` takes out of the flow and trace indexes."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    retried: dict[str, int] = defaultdict(int)
    listed = []
    for name, retries, *values in rows:
        row = dict(zip(digests.FORGET_COLUMNS, values, strict=True))
        listed.append(row)
        counts[name, row["tally_state"]] -= 1
        if retries:
            retried[name] -= 1
    return (
        [(*k, n) for k, n in counts.items()],
        [(n, name) for name, n in retried.items()],
        listed,
    )


def prune(conn: Executes, before: float) -> None:
    """Drop the periods of rollups that end before ``before`` (retention's cutoff)."""
    for table in ("rollups", "rollup_hist"):
        for res in (MINUTE, HOUR):
            conn.execute(
                f"DELETE FROM {table} WHERE dim IN ({_DIMS}) AND res = ? AND t <= ?",
                (res, before - res),
            )
    digests.prune(conn, before)


def fold(conn: Executes, before: float) -> int:
    """Forget the per-minute rows of the hours that ended before ``before``.

    The writer keeps every period's hour beside its minutes, so the hours
    already hold what the minutes held: reads of those times use them
    (:func:`series`, :func:`by_key`). Returns how many minute rows went.
    """
    edge = int(before // HOUR) * HOUR
    old = f"dim IN ({_DIMS}) AND res = {MINUTE} AND t < ?"
    gone = conn.execute(f"DELETE FROM rollups WHERE {old}", (edge,)).rowcount
    conn.execute(f"DELETE FROM rollup_hist WHERE {old}", (edge,))
    conn.execute("UPDATE rollup_state SET folded_before = ? WHERE folded_before < ?", (edge, edge))
    return int(gone)


def _folded_before(conn: Executes) -> int:
    row = conn.execute("SELECT folded_before FROM rollup_state").fetchone()
    return int(row[0]) if row else 0


def series(
    conn: Executes, since: float, until: float, step: int, dim: str, key: str
) -> list[dict[str, Any]]:
    """Outcomes and wait and run-time histograms per ``step`` seconds over ``[since, until)``.

    A step of whole hours reads the hour rows; a shorter one the minutes, and
    the hours where the minutes were folded away (such an hour lands whole in
    the step holding its start). SQLite sums each step's rows.
    """
    start = int(since // step) * step
    points: dict[int, dict[str, Any]] = {
        t: {"t": t, **dict.fromkeys(OUTCOMES, 0), "wait": [0] * buckets.COUNT,
            "run": [0] * buckets.COUNT}
        for t in range(start, int(until), step)
    }  # fmt: skip
    if step % HOUR == 0:
        periods = f"res = {HOUR}"
    else:
        periods = f"(res = {MINUTE} OR (res = {HOUR} AND t < {_folded_before(conn)}))"
    where = f"dim = ? AND key = ? AND {periods} AND t >= ? AND t < ?"
    slot = f"({start} + (t - {start}) / {step} * {step})"
    rows = conn.execute(
        f"SELECT {slot}, {', '.join(f'SUM({c})' for c in OUTCOMES)} FROM rollups"
        f" WHERE {where} GROUP BY 1",
        (dim, key, start, until),
    )
    for t, *counts in rows:
        point = points.get(int(t))
        if point is not None:
            for name, count in zip(OUTCOMES, counts, strict=True):
                point[name] += count
    hist_rows = conn.execute(
        f"SELECT {slot}, metric, counts FROM rollup_hist WHERE {where}", (dim, key, start, until)
    )
    for t, metric, counts in hist_rows:
        point = points.get(int(t))
        if point is not None and metric in ("wait", "run"):
            _add(point[metric], counts)
    return list(points.values())


def name_numbers(conn: Executes) -> dict[str, dict[str, Any]]:
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
    for name, counts in conn.execute(
        "SELECT key, counts FROM rollup_hist INDEXED BY rollup_hist_by_time"
        " WHERE dim = 'name' AND res = 0 AND t = 0 AND metric = 'run'"
    ):
        if name in found:
            _add(found[name]["run"], counts)
    return found


MINUTES_UP_TO = 6 * HOUR
"""Ranges up to this long are counted to the minute; longer ones by whole hours."""


def by_key(
    conn: Executes,
    dim: str,
    since: float,
    until: float,
    metrics: tuple[str, ...] = ("wait", "run"),
) -> dict[str, Any]:
    """Per key of ``dim`` over ``[since, until)``: outcome totals and ``metrics``' histograms.

    A range up to :data:`MINUTES_UP_TO` long is read to the minute (whole hours
    from the hour rows, the ends from the minutes); a longer one, or one that
    starts where the minutes were folded away, by whole hours: its first hour
    counts whole.
    """
    first_minute = int(since // MINUTE) * MINUTE
    h0 = -(-int(since) // HOUR) * HOUR
    h1 = int(until // HOUR) * HOUR
    if until - since > MINUTES_UP_TO or first_minute < _folded_before(conn):
        h0, h1 = first_minute // HOUR * HOUR, -(-int(until) // HOUR) * HOUR
    if h0 >= h1:
        spans = [(MINUTE, first_minute, until)]
    else:
        spans = [(HOUR, h0, h1), (MINUTE, first_minute, h0), (MINUTE, h1, until)]
    return _by_key(conn, dim, [span for span in spans if span[1] < span[2]], metrics)


def since_ever(
    conn: Executes, dim: str, metrics: tuple[str, ...] = ("wait", "run")
) -> dict[str, Any]:
    """Per key of ``dim``: the counters since the store began (they only grow), with the
    histograms of ``metrics`` (the others' all zeros: ``()`` when only the keys count)."""
    return _by_key(conn, dim, [(ALL_TIME, ALL_TIME, ALL_TIME + 1)], metrics)


def _by_key(
    conn: Executes,
    dim: str,
    spans: list[tuple[int, float, float]],
    metrics: tuple[str, ...] = ("wait", "run"),
) -> dict[str, Any]:
    """Totals per key of ``dim`` over the periods of each ``(res, from, to)`` span.

    Each span is one range of the ``(dim, res, t)`` index, so SQLite reads only the
    periods asked for; the histograms' cells are added up here.
    """
    found: dict[str, dict[str, Any]] = {}

    def entry(key: str) -> dict[str, Any]:
        return found.setdefault(
            key,
            {**dict.fromkeys(OUTCOMES, 0), "wait": [0] * buckets.COUNT,
             "run": [0] * buckets.COUNT},
        )  # fmt: skip

    if not spans:
        return found
    in_span = "dim = ? AND res = ? AND t >= ? AND t < ?"
    params = [value for span in spans for value in (dim, *span)]
    outcomes = ", ".join(OUTCOMES)
    rows = conn.execute(
        f"SELECT key, {', '.join(f'SUM({c})' for c in OUTCOMES)} FROM ("
        + " UNION ALL ".join(
            f"SELECT key, {outcomes} FROM rollups INDEXED BY rollups_by_time WHERE {in_span}"
            for _ in spans
        )
        + ") AS spans GROUP BY key",
        params,
    )
    for key, *counts in rows:
        entry(key).update(zip(OUTCOMES, counts, strict=True))
    chosen = ", ".join(f"'{m}'" for m in metrics if m in ("wait", "run"))
    if not chosen:
        return found
    hist_rows = conn.execute(
        " UNION ALL ".join(
            "SELECT key, metric, counts FROM rollup_hist INDEXED BY rollup_hist_by_time"
            f" WHERE {in_span} AND metric IN ({chosen})"
            for _ in spans
        ),
        params,
    )
    for key, metric, counts in hist_rows:
        if metric in ("wait", "run"):
            _add(entry(key)[metric], counts)
    return found
