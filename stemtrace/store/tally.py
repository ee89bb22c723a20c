"""Counting a batch into the rollups and digests: what each task shows and was not counted as.

:func:`tally` runs in the writer's transaction, after the batch's rows are
written. A task the batch inserted is counted from the values it wrote
(:func:`inserted_rows`: SQLite holds just those, and the task was never
counted); SQLite reads every other touched task with what it was counted as
(``task_tally``) and works out what it shows now (the outcome bits, the flow
and trace it is listed in). Python then counts in a few passes over all the
rows at once, into cells of name, queue, worker and minute with plain dicts,
and the cells are spread over the dimensions and periods when written.
Per-row Python is what rollups cost ingestion, so there is as little of it as
the counting allows.

PostgreSQL counts with the same :class:`Batch`: only its SELECT (built by
:func:`select_sql`, every touched task read back) and the statements of
:meth:`Batch.writes` are its own (:mod:`stemtrace.store.pg.rollup_writes`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import add
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
_RETRIED = OUTCOMES.index("retried")
_SENT, _STARTED = OUTCOMES.index("sent"), OUTCOMES.index("started")
# The column of an ending (one of the succeeded, failed and revoked bits a batch finds new).
_ENDED = {
    SUCCEEDED: OUTCOMES.index("succeeded"), FAILED: OUTCOMES.index("failed"),
    REVOKED: OUTCOMES.index("revoked"),
}  # fmt: skip


@dataclass(frozen=True)
class Written:
    """A batch's task rows as the writer has just written them."""

    rows: Sequence[Sequence[Any]]
    """The rows, one per task; :data:`INSERTED_FROM` names what is read of them."""
    at: Mapping[str, int]
    """The place of each column in a row."""
    rowids: Mapping[str, int]
    """Each task's rowid, by task id."""
    top: int
    """The largest rowid before the batch (0: none): a task past it was inserted by the batch."""


def tally(
    conn: sqlite3.Connection, rowids: Iterable[int], dumps: Any, written: Written | None = None
) -> None:
    """Count what the rows ``rowids`` show and were not counted as; in the writer's transaction.

    ``dumps`` encodes the rowids as a JSON array (the writer's own encoder).
    ``written``: the batch that wrote them; the tasks it inserted are counted from
    the values it wrote (:func:`inserted_rows`) instead of read back.
    """
    if written is None:
        ids, inserted = list(rowids), []
    else:
        ids = [rowid for rowid in rowids if rowid <= written.top]
        inserted = inserted_rows(conn, written, dumps)
    rows = conn.execute(_SELECT, (dumps(ids),)).fetchall() if ids else []
    if inserted:
        rows += inserted
    if rows:
        Batch(rows).write(conn)


_ROOTS = (
    "SELECT t.id, t.root_id, t.group_id FROM tasks AS t"
    " WHERE t.id IN (SELECT value FROM json_each(?))"
)
INSERTED_FROM = (
    "name", "state", "queue", "worker", "sent_at", "started_at", "runtime", "state_ts", "seen_at",
    "id", "root_id", "exc_type", "exc_message", "finished_at", "retries", "group_id", "trace_id",
)  # fmt: skip
"""The task columns :func:`inserted_rows` reads."""


def inserted_rows(conn: sqlite3.Connection, written: Written, dumps: Any) -> list[Row]:
    """:data:`TALLY_COLUMNS` rows of the tasks ``written`` inserted, without reading them back.

    SQLite holds the values it was given, and a task never counted has no
    ``task_tally`` row. What each row shows is worked out here as :data:`_DERIVED`
    and :func:`facts` work it out in SQL (a test holds the two to the same rows);
    only the roots of the flows that are not among the inserted rows are read.
    Tasks without a name are left out, as the SELECT leaves them; rows come in
    rowid order, as the SELECT gives them.
    """
    at, top, ids = written.at, written.top, written.rowids
    (i_name, i_state, i_queue, i_worker, i_sent, i_started, i_runtime, i_state_ts, i_seen,
     i_id, i_root, i_exc_type, i_exc_message, i_finished, i_retries, i_group,
     i_trace) = (at[c] for c in INSERTED_FROM)  # fmt: skip
    fresh = [(ids[row[i_id]], row) for row in written.rows if ids[row[i_id]] > top]
    roots = {row[i_id]: (row[i_root], row[i_group]) for _, row in fresh}
    elsewhere = {row[i_root] for _, row in fresh} - roots.keys() - {None}
    if elsewhere:
        roots.update(
            (tid, (root, group))
            for tid, root, group in conn.execute(_ROOTS, (dumps(list(elsewhere)),))
        )
    found: list[Row] = []
    append = found.append
    for rowid, row in fresh:
        name = row[i_name]
        if name is None:
            continue
        # SQLite keeps a NaN as NULL: so does the row counted here (x != x: a NaN)
        sent, started, runtime = row[i_sent], row[i_started], row[i_runtime]
        sent = None if sent != sent else sent
        started = None if started != started else started
        runtime = None if runtime != runtime else runtime
        state = row[i_state]
        new = _ENDS.get(state, 0)
        if new & (SUCCEEDED | FAILED) and runtime is not None:
            new |= RAN
        if sent is not None:
            new |= SENT | WAITED if started is not None else SENT
        if started is not None:
            new |= STARTED
        finished = row[i_finished]
        if finished is None or finished != finished:
            finished = row[i_state_ts]
        tid, trace = row[i_id], row[i_trace]
        flow = _flow(tid, row[i_root], row[i_group], roots)
        append((
            rowid, name, state, row[i_queue], row[i_worker], sent, started, runtime,
            row[i_state_ts], row[i_seen], tid, row[i_root], row[i_exc_type], row[i_exc_message],
            new, finished, row[i_retries], flow, None if trace == tid else trace,
            0, None, 0, None, None,
        ))  # fmt: skip
    return found


_ENDS = {
    states.SUCCESS: SUCCEEDED, states.FAILURE: FAILED, **dict.fromkeys(REVOKED_STATES, REVOKED)
}  # fmt: skip
"""The outcome bit of a final state (:func:`facts`' in Python)."""


def _flow(
    task_id: str,
    root_id: str | None,
    group_id: str | None,
    roots: Mapping[str, tuple[str | None, str | None]],
) -> str | None:
    """The flow a task is listed in (``_DERIVED["flow"]`` in Python); ``roots``: the
    ``(root_id, group_id)`` of each root stored."""
    if root_id is not None and root_id != task_id:
        root = roots.get(root_id)
        flow = root_id
        if root is not None and root[1] is not None and (root[0] is None or root[0] == root_id):
            flow = root[1]  # a root that is its own root, in a group: the group is the flow
    else:
        flow = task_id if group_id is None else group_id
    return None if flow == task_id else flow


class Batch:
    """What one batch's rows add to the rollup tables and the digests.

    Each phase is one pass over the rows with plain dicts: each outcome counted
    in its cell of name, queue, worker and minute, each wait and run time in
    its cell's bucket; :meth:`spread` then spreads the cells, far fewer than
    the rows, over the dimensions and periods.
    """

    def __init__(self, rows: list[Row]) -> None:
        self.cells: dict[Cell, list[int]] = {}
        self.hist: dict[tuple[Cell, str], list[int]] = {}  # a cell's bucket counts, by metric
        self.digests = digests.Digests()
        self._outcomes(rows)
        self.counts, self.names = _per_name(rows)
        self._listed(rows)
        self.tallies = [
            (r[ROWID], r[TALLY] | r[NEW], r[STATE], max(r[RETRIES_NOW], r[TALLY_RETRIES]),
             r[FLOW], r[TRACE])
            for r in rows
            if r[NEW] or r[STATE] != r[TALLY_STATE] or r[RETRIES_NOW] > r[TALLY_RETRIES]
            or r[FLOW] != r[TALLY_FLOW] or r[TRACE] != r[TALLY_TRACE]
        ]  # fmt: skip

    # One pass, and the cell's key worked out once for its outcome and its measure: per-row
    # Python is what rollups cost ingestion (a pass for the measures of their own made the
    # batch's counting take 40 % longer), so the branches stay together here.
    def _outcomes(self, rows: list[Row]) -> None:  # noqa: C901
        """Each outcome in the minute it happened (sent under no worker: none has it yet),
        retries at the state's time; a new failure in its error group. The wait and run
        time, each once both ends are known (a late sent still gives the wait), in the
        bucket of the cell the task started in, and of the one it finished in."""
        cells, failed, zeros = self.cells, self.digests.failed, [0] * len(OUTCOMES)
        get, hist, measured = cells.get, self.hist, self.hist.get
        bounds, inf, width = buckets.FINITE, math.inf, buckets.COUNT

        def cell(key: Cell) -> list[int]:
            """A cell seen for the first time (most are found with ``get``: no call)."""
            return cells.setdefault(key, zeros[:])

        def counts(key: tuple[Cell, str]) -> list[int]:
            """A cell's histogram seen for the first time."""
            return hist.setdefault(key, [0] * width)

        for r in rows:
            new, name, queue, worker = r[NEW], r[NAME], r[QUEUE], r[WORKER]
            if new & SENT and r[SENT_AT] is not None:
                key = (name, queue, None, int(r[SENT_AT] // MINUTE) * MINUTE)
                (get(key) or cell(key))[_SENT] += 1
            if new & (STARTED | WAITED) and r[STARTED_AT] is not None:
                started = r[STARTED_AT]
                key = (name, queue, worker, int(started // MINUTE) * MINUTE)
                if new & STARTED:
                    (get(key) or cell(key))[_STARTED] += 1
                if new & WAITED:
                    wait = started - r[SENT_AT]
                    if -inf < wait < inf:
                        found = (key, "wait")
                        (measured(found) or counts(found))[bisect_left(bounds, wait)] += 1
            ended = new & (SUCCEEDED | FAILED | REVOKED)  # one at most: a row has one state
            if ended:
                at = r[STATE_TS] if ended == REVOKED else r[FINISHED]
                if at is not None:
                    key = (name, queue, worker, int(at // MINUTE) * MINUTE)
                    (get(key) or cell(key))[_ENDED[ended]] += 1
                    if new & RAN:  # succeeded or failed: ``at`` is when it finished
                        runtime = r[RUNTIME]
                        if -inf < runtime < inf:
                            found = (key, "run")
                            (measured(found) or counts(found))[bisect_left(bounds, runtime)] += 1
                if ended == FAILED:
                    failed(name, r[ID], r[EXC_TYPE], r[EXC_MESSAGE], r[FINISHED] or r[SEEN_AT])
            elif new & RAN and r[FINISHED] is not None:  # its ending counted before
                runtime = r[RUNTIME]
                if -inf < runtime < inf:
                    found = ((name, queue, worker, int(r[FINISHED] // MINUTE) * MINUTE), "run")
                    (measured(found) or counts(found))[bisect_left(bounds, runtime)] += 1
            more = r[RETRIES_NOW] - r[TALLY_RETRIES]
            if more > 0:
                at = r[STATE_TS] if r[STATE_TS] is not None else r[SEEN_AT]
                if at is not None:
                    key = (name, queue, worker, int(at // MINUTE) * MINUTE)
                    (get(key) or cell(key))[_RETRIED] += min(more, 1000)

    def _listed(self, rows: list[Row]) -> None:
        """Flows and traces: a task moved between them, or counts differently in them now."""
        add, shares = self.digests.add, {None: digests.NOTHING}
        for r in rows:
            flow, trace, was_state, state = r[FLOW], r[TRACE], r[TALLY_STATE], r[STATE]
            moved = flow != r[TALLY_FLOW] or trace != r[TALLY_TRACE]
            if not moved and flow is None and trace is None:
                continue
            was = shares.get(was_state) or shares.setdefault(was_state, digests.share(was_state))
            now = shares.get(state) or shares.setdefault(state, digests.share(state))
            if moved or was != now:
                seen = r[SEEN_AT]
                listed = (r[TALLY_FLOW], r[TALLY_TRACE], flow, trace)
                add(listed, (seen, r[FINISHED] or seen), was, now, r[ROOT_ID])

    def spread(self) -> tuple[dict[tuple[Any, ...], list[int]], dict[tuple[Any, ...], list[int]]]:
        """The cells' counts per dimension, key and period: minute, hour and since ever.

        In stages: the minutes of each key first, then their hours, then since
        ever, each from the stage before (fewer entries each time, since the
        cells of one key and period merge).
        """
        dims: dict[tuple[str, str | None, str | None], list[tuple[str, str]]] = {}
        minutes: dict[tuple[Any, ...], list[int]] = {}
        for (name, queue, worker, minute), counts in self.cells.items():
            for dim, key in _dims(dims, name, queue, worker):
                _merge(minutes, (dim, key, MINUTE, minute), counts)
        hours: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, _, minute), counts in minutes.items():
            _merge(hours, (dim, key, HOUR, minute // HOUR * HOUR), counts)
        ever: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, _, _), counts in hours.items():
            _merge(ever, (dim, key, ALL_TIME, ALL_TIME), counts)
        hist: dict[tuple[Any, ...], list[int]] = {}
        for ((name, queue, worker, minute), metric), counts in self.hist.items():
            for dim, key in _dims(dims, name, queue, worker):
                _merge(hist, (dim, key, metric, MINUTE, minute), counts)
        hour_hist: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, metric, _, minute), counts in hist.items():
            _merge(hour_hist, (dim, key, metric, HOUR, minute // HOUR * HOUR), counts)
        ever_hist: dict[tuple[Any, ...], list[int]] = {}
        for (dim, key, metric, _, _), counts in hour_hist.items():
            _merge(ever_hist, (dim, key, metric, ALL_TIME, ALL_TIME), counts)
        return {**minutes, **hours, **ever}, {**hist, **hour_hist, **ever_hist}

    def writes(self) -> Writes:
        """What to write, in order: ``(statement, rows of parameters)``, each statement
        named as in :data:`SQLITE` (a backend spells them in its own SQL)."""
        outcomes, hist = self.spread()
        found: Writes = [
            ("rollup", [(*key, *counts) for key, counts in outcomes.items()]),
            ("hist", [(*k, buckets.trimmed(counts)) for k, counts in hist.items()]),
            ("count", [(*k, n) for k, n in self.counts.items() if n]),
            ("drop_empty", [k for k, n in self.counts.items() if n < 0]),
            ("name", [(name, *values) for name, values in self.names.items()]),
            ("tally", self.tallies),
            *self.digests.writes(),
        ]
        return [(statement, rows) for statement, rows in found if rows]

    def write(self, conn: sqlite3.Connection) -> None:
        for statement, rows in self.writes():
            if statement == "hist":  # SQLite keeps a cell's counts packed
                rows = [(*row[:5], buckets.pack(row[5])) for row in rows]
            conn.executemany(SQLITE[statement], rows)


def _per_name(rows: list[Row]) -> tuple[dict[tuple[str, str], int], dict[str, list[Any]]]:
    """Tasks by name and state (moves out of the old state, into the new); per name the
    last sighting and the tasks that retried for the first time."""
    counts: dict[tuple[str, str], int] = {}
    get = counts.get
    names: dict[str, list[Any]] = {}
    for r in rows:
        name, state, was_state = r[NAME], r[STATE], r[TALLY_STATE]
        if state != was_state:
            counts[name, state] = get((name, state), 0) + 1
            if was_state is not None:
                counts[name, was_state] = get((name, was_state), 0) - 1
        known = names.get(name)
        if known is None:
            known = names[name] = [None, 0]
        seen = r[SEEN_AT]
        if seen is not None and (known[0] is None or seen > known[0]):
            known[0] = seen
        if r[RETRIES_NOW] > 0 and r[TALLY_RETRIES] == 0:
            known[1] += 1
    return counts, names


def _merge(into: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], counts: list[int]) -> None:
    known = into.get(key)
    into[key] = list(counts) if known is None else list(map(add, known, counts))


def _dims(
    known: dict[tuple[str, str | None, str | None], list[tuple[str, str]]],
    name: str,
    queue: str | None,
    worker: str | None,
) -> list[tuple[str, str]]:
    """The dimensions and keys a cell counts under (worked out once per ``known``)."""
    found = known.get((name, queue, worker))
    if found is None:
        found = known[name, queue, worker] = [("all", ""), ("name", name)]
        if queue:
            found.append(("queue", queue))
        if worker:
            found.append(("worker", worker))
    return found


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
