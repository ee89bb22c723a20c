"""Counting a batch into the rollups and digests: what each task shows and was not counted as.

:func:`tally` runs in the writer's transaction, after the batch's rows are
written. SQLite reads every touched task with what it was counted as
(``task_tally``) and works out what it shows now (the outcome bits, the
flow and trace it is listed in); Python then counts in passes over all the
rows at once (one ``Counter`` per outcome, per cell of name, queue, worker
and minute), and the cells are spread over the dimensions when written.
Per-row Python is what rollups cost ingestion, so there is as little of it
as the counting allows.

PostgreSQL counts with the same :class:`Batch`: only its SELECT (built by
:func:`select_sql`) and the statements of :meth:`Batch.writes` are its own
(:mod:`stemtrace.store.pg.rollup_writes`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from stemtrace.core import buckets, states
from stemtrace.store import digests
from stemtrace.store.rollups import (
    ALL_TIME,
    DROP_EMPTY,
    FAILED,
    HOUR,
    MINUTE,
    OUTCOMES,
    RAN,
    REVOKED,
    REVOKED_STATES,
    SENT,
    SET_TALLY,
    STARTED,
    SUCCEEDED,
    UPSERT_COUNT,
    UPSERT_HIST,
    UPSERT_NAME,
    UPSERT_ROLLUP,
    WAITED,
)

_TASK_COLUMNS = (
    "rowid", "name", "state", "queue", "worker", "sent_at", "started_at", "runtime",
    "state_ts", "seen_at", "id", "root_id", "exc_type", "exc_message",
)  # fmt: skip
_SUCCESS, _FAILURE = f"'{states.SUCCESS}'", f"'{states.FAILURE}'"
_REVOKED_IN = ", ".join(f"'{s}'" for s in sorted(REVOKED_STATES))


def facts(flag: Callable[[str], str] = lambda cond: f"({cond})") -> str:
    """The outcome bits a task row ``t`` shows, in SQL; ``flag`` makes a condition 0 or 1
    (SQLite's conditions are; PostgreSQL's are cast)."""
    return f"""{flag("t.sent_at IS NOT NULL")} * {SENT}
    + {flag("t.started_at IS NOT NULL")} * {STARTED}
    + {flag(f"t.state = {_SUCCESS}")} * {SUCCEEDED} + {flag(f"t.state = {_FAILURE}")} * {FAILED}
    + {flag(f"t.state IN ({_REVOKED_IN})")} * {REVOKED}
    + {flag("t.sent_at IS NOT NULL AND t.started_at IS NOT NULL")} * {WAITED}
    + {flag(f"t.runtime IS NOT NULL AND t.state IN ({_SUCCESS}, {_FAILURE})")} * {RAN}"""


# What the row shows now and was not counted as, worked out by SQLite for all rows at once.
_DERIVED = {
    "new": f"({facts()}) & ~coalesce(c.tally, 0)",
    "finished": "coalesce(t.finished_at, t.state_ts)",
    "retries_now": "CASE WHEN typeof(t.retries) = 'integer' THEN t.retries ELSE 0 END",
    # the flow and trace a task is listed in: not the ones named after it (digests)
    "flow": """nullif(CASE WHEN t.root_id IS NOT NULL AND t.root_id != t.id
            THEN coalesce((SELECT r.group_id FROM tasks AS r
                           WHERE r.id = t.root_id AND coalesce(r.root_id, r.id) = r.id),
                          t.root_id)
            ELSE coalesce(t.group_id, t.id) END, t.id)""",
    "trace": "nullif(t.trace_id, t.id)",
}
_COUNTED = {
    "tally": "coalesce(c.tally, 0)",
    "tally_state": "c.state",
    "tally_retries": "coalesce(c.retries, 0)",
    "tally_flow": "c.flow",
    "tally_trace": "c.trace",
}
TALLY_COLUMNS = (*_TASK_COLUMNS, *_DERIVED, *_COUNTED)
"""What a row is counted from: the task's columns, what it shows now, what it was counted as."""


def select_sql(where: str, **dialect: str) -> str:
    """What rows are counted from (:data:`TALLY_COLUMNS`) for the tasks ``where`` picks;
    ``dialect`` spells some of :data:`TALLY_COLUMNS`' derived columns for another backend."""
    derived = {**_DERIVED, **dialect}
    return (
        f"SELECT {', '.join(f't.{c}' for c in _TASK_COLUMNS)},"
        f" {', '.join(derived[c] for c in _DERIVED)}, {', '.join(_COUNTED.values())}"
        " FROM tasks AS t LEFT JOIN task_tally AS c ON c.task_rowid = t.rowid"
        f" WHERE {where} AND t.name IS NOT NULL"
    )


_SELECT = select_sql("t.rowid IN (SELECT value FROM json_each(?))")
_AT = {name: i for i, name in enumerate(TALLY_COLUMNS)}
(ROWID, NAME, STATE, QUEUE, WORKER, SENT_AT, STARTED_AT, RUNTIME, STATE_TS, SEEN_AT, ID,
 ROOT_ID, EXC_TYPE, EXC_MESSAGE, NEW, FINISHED, RETRIES_NOW, FLOW, TRACE, TALLY, TALLY_STATE,
 TALLY_RETRIES, TALLY_FLOW, TALLY_TRACE) = range(len(TALLY_COLUMNS))  # fmt: skip

Row = tuple[Any, ...]
Writes = list[tuple[str, list[tuple[Any, ...]]]]
SQLITE = {
    "rollup": UPSERT_ROLLUP, "hist": UPSERT_HIST, "count": UPSERT_COUNT,
    "drop_empty": DROP_EMPTY, "name": UPSERT_NAME, "tally": SET_TALLY, **digests.SQLITE,
}  # fmt: skip
"""SQLite's statement of each write a :class:`Batch` names."""
Cell = tuple[str, str | None, str | None, int]
# Each outcome: its column, its bit, when it happened (a column), whether per worker.
_PASSES = (
    (OUTCOMES.index("sent"), SENT, SENT_AT, False),
    (OUTCOMES.index("started"), STARTED, STARTED_AT, True),
    (OUTCOMES.index("succeeded"), SUCCEEDED, FINISHED, True),
    (OUTCOMES.index("failed"), FAILED, FINISHED, True),
    (OUTCOMES.index("revoked"), REVOKED, STATE_TS, True),
)
_RETRIED = OUTCOMES.index("retried")


def tally(conn: sqlite3.Connection, rowids: Iterable[int], dumps: Any) -> None:
    """Count what the rows ``rowids`` show and were not counted as; in the writer's transaction.

    ``dumps`` encodes the rowids as a JSON array (the writer's own encoder).
    """
    rows = conn.execute(_SELECT, (dumps(list(rowids)),)).fetchall()
    if rows:
        Batch(rows).write(conn)


class Batch:
    """What one batch's rows add to the rollup tables and the digests."""

    def __init__(self, rows: list[Row]) -> None:
        self.cells: dict[Cell, list[int]] = {}
        self.hist: Counter[tuple[Any, ...]] = Counter()
        self.digests = digests.Digests()
        self._outcomes(rows)
        self._retries(rows)
        self._measures(rows)
        self.counts, self.names = _per_name(rows)
        self._listed(rows)
        self.tallies = [
            (r[ROWID], r[TALLY] | r[NEW], r[STATE], max(r[RETRIES_NOW], r[TALLY_RETRIES]),
             r[FLOW], r[TRACE])
            for r in rows
            if r[NEW] or r[STATE] != r[TALLY_STATE] or r[RETRIES_NOW] > r[TALLY_RETRIES]
            or r[FLOW] != r[TALLY_FLOW] or r[TRACE] != r[TALLY_TRACE]
        ]  # fmt: skip
        for row in rows:
            if row[NEW] & FAILED:
                self.digests.failure(_as_dict(row))

    def _add(self, cell: Cell, column: int, n: int) -> None:
        counts = self.cells.get(cell)
        if counts is None:
            counts = self.cells[cell] = [0] * len(OUTCOMES)
        counts[column] += n

    def _outcomes(self, rows: list[Row]) -> None:
        for column, bit, at, by_worker in _PASSES:
            found = Counter(
                (r[NAME], r[QUEUE], r[WORKER] if by_worker else None, int(r[at] // MINUTE) * MINUTE)
                for r in rows
                if r[NEW] & bit and r[at] is not None
            )
            for cell, n in found.items():
                self._add(cell, column, n)

    def _retries(self, rows: list[Row]) -> None:
        for r in rows:
            more = r[RETRIES_NOW] - r[TALLY_RETRIES]
            ts = r[STATE_TS] if r[STATE_TS] is not None else r[SEEN_AT]
            if more > 0 and ts is not None:
                cell = (r[NAME], r[QUEUE], r[WORKER], int(ts // MINUTE) * MINUTE)
                self._add(cell, _RETRIED, min(more, 1000))

    def _measures(self, rows: list[Row]) -> None:
        index = buckets.index
        self.hist.update(
            (r[NAME], r[QUEUE], r[WORKER], "wait", int(r[STARTED_AT] // MINUTE) * MINUTE,
             index(r[STARTED_AT] - r[SENT_AT]))
            for r in rows
            if r[NEW] & WAITED
        )  # fmt: skip
        self.hist.update(
            (r[NAME], r[QUEUE], r[WORKER], "run", int(r[FINISHED] // MINUTE) * MINUTE,
             index(r[RUNTIME]))
            for r in rows
            if r[NEW] & RAN and r[FINISHED] is not None
        )  # fmt: skip

    def _listed(self, rows: list[Row]) -> None:
        """Flows and traces: a task moved between them, or counts differently in them now."""
        share, add = digests.share, self.digests.add
        for r in rows:
            flow, trace = r[FLOW], r[TRACE]
            moved = flow != r[TALLY_FLOW] or trace != r[TALLY_TRACE]
            if not moved and flow is None and trace is None:
                continue
            was, now = share(r[TALLY_STATE]), share(r[STATE])
            if moved or was != now:
                listed = (r[TALLY_FLOW], r[TALLY_TRACE], flow, trace)
                add(listed, (r[SEEN_AT], r[FINISHED] or r[SEEN_AT]), was, now, r[ROOT_ID])

    def spread(self) -> tuple[dict[tuple[Any, ...], list[int]], Counter[tuple[Any, ...]]]:
        """The cells' counts per dimension, key and period: minute, hour and since ever.

        In stages: the minutes of each key first, then their hours, then since
        ever, each from the stage before (fewer entries each time, since the
        cells of one key and period merge).
        """
        minutes: dict[tuple[Any, ...], list[int]] = {}
        for (name, queue, worker, minute), counts in self.cells.items():
            for dim, key in _dims(name, queue, worker):
                _merge(minutes, (dim, key, MINUTE, minute), counts)
        hours: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, _, minute), counts in minutes.items():
            _merge(hours, (dim, key, HOUR, minute // HOUR * HOUR), counts)
        ever: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, _, _), counts in hours.items():
            _merge(ever, (dim, key, ALL_TIME, ALL_TIME), counts)
        outcomes = {**minutes, **hours, **ever}
        hist: Counter[tuple[Any, ...]] = Counter()
        for (name, queue, worker, metric, minute, bucket), n in self.hist.items():
            if bucket is None:
                continue
            for dim, key in _dims(name, queue, worker):
                hist[dim, key, metric, MINUTE, minute, bucket] += n
        hour_hist: Counter[tuple[Any, ...]] = Counter()
        for (dim, key, metric, _, minute, bucket), n in hist.items():
            hour_hist[dim, key, metric, HOUR, minute // HOUR * HOUR, bucket] += n
        ever_hist: Counter[tuple[Any, ...]] = Counter()
        for (dim, key, metric, _, _, bucket), n in hour_hist.items():
            ever_hist[dim, key, metric, ALL_TIME, ALL_TIME, bucket] += n
        hist.update(hour_hist)
        hist.update(ever_hist)
        return outcomes, hist

    def writes(self) -> Writes:
        """What to write, in order: ``(statement, rows of parameters)``, each statement
        named as in :data:`SQLITE` (a backend spells them in its own SQL)."""
        outcomes, hist = self.spread()
        found: Writes = [
            ("rollup", [(*key, *counts) for key, counts in outcomes.items()]),
            ("hist", [(*k, n) for k, n in hist.items()]),
            ("count", [(*k, n) for k, n in self.counts.items() if n]),
            ("drop_empty", [k for k, n in self.counts.items() if n < 0]),
            ("name", [(name, *values) for name, values in self.names.items()]),
            ("tally", self.tallies),
            *self.digests.writes(),
        ]
        return [(statement, rows) for statement, rows in found if rows]

    def write(self, conn: sqlite3.Connection) -> None:
        for statement, rows in self.writes():
            conn.executemany(SQLITE[statement], rows)


def _per_name(rows: list[Row]) -> tuple[Counter[tuple[str, str]], dict[str, list[Any]]]:
    """Tasks by name and state (moves out of the old state, into the new); per name the
    last sighting and the tasks that retried for the first time."""
    counts: Counter[tuple[str, str]] = Counter(
        (r[NAME], r[STATE]) for r in rows if r[STATE] != r[TALLY_STATE]
    )
    counts.subtract(
        (r[NAME], r[TALLY_STATE])
        for r in rows
        if r[STATE] != r[TALLY_STATE] and r[TALLY_STATE] is not None
    )
    names: dict[str, list[Any]] = {}
    for r in rows:
        known = names.get(r[NAME])
        if known is None:
            known = names[r[NAME]] = [None, 0]
        seen = r[SEEN_AT]
        if seen is not None and (known[0] is None or seen > known[0]):
            known[0] = seen
        if r[RETRIES_NOW] > 0 and r[TALLY_RETRIES] == 0:
            known[1] += 1
    return counts, names


def _merge(into: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], counts: list[int]) -> None:
    known = into.get(key)
    if known is None:
        into[key] = list(counts)
    else:
        for i, n in enumerate(counts):
            known[i] += n


def _dims(name: str, queue: str | None, worker: str | None) -> list[tuple[str, str]]:
    found = [("all", ""), ("name", name)]
    if queue:
        found.append(("queue", queue))
    if worker:
        found.append(("worker", worker))
    return found


def _as_dict(row: Row) -> dict[str, Any]:
    return dict(zip(TALLY_COLUMNS, row, strict=True))


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


assert _AT["tally_trace"] == TALLY_TRACE  # the names above follow TALLY_COLUMNS
