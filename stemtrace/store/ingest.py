"""Write validated events into the store: one transaction per batch, one writer.

The events of one task in a batch are merged in Python (:func:`merge_rows`)
into one row, which becomes one ``UPSERT`` into ``tasks`` whose ``SET``
clause applies the same merge rule against what the store already holds:

* the state follows :func:`stemtrace.core.states.state_key` (``CASE`` on the row
  value ``(state_attempt, state_rank, state_ts)``), not arrival order;
* structural fields (name, parent, root, group, trace, args, ...) keep the
  first value known (``COALESCE``);
* first-seen times take the minimum, results and exceptions come from the
  terminal event.

Every merge is idempotent, so a re-delivered event changes nothing. The
history gets one row per task per batch, under the task's rowid, with that
batch's records of the task; readers skip a record whose ``eid`` they have
already seen.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from stemtrace.core import events as ev
from stemtrace.core import jsonio, states
from stemtrace.store import fleet_writes, planned, search, tally
from stemtrace.store import skipped as skipped_input
from stemtrace.store.migrations import (
    CELERY_ROW_FIELDS,
    HISTORY_COLUMNS,
    HISTORY_RECORD,
    ROW_FIELDS,
)
from stemtrace.store.skipped import Skip

_dumps = jsonio.dumps

TASK_COLUMNS = (
    "id", "name", "state", "state_attempt", "state_rank", "state_ts", "parent_id", "root_id",
    "group_id", "group_index", "chord_id", "chord_name", "trace_id", "worker", "retries", "queue",
    "routing_key", "eta", "expires", "sent_at", "received_at", "started_at", "finished_at",
    "runtime", "args", "kwargs", "result", "exc_type", "exc_message", "traceback", "chain",
    "instrumented", "seen_at", "updated_at", "sources", "detail_rank",
)  # fmt: skip


# How each column merges when a task's row meets another event of it.
FIRST_KNOWN = (
    "name", "parent_id", "root_id", "group_id", "group_index", "chord_id", "chord_name",
    "trace_id", "queue", "routing_key", "expires", "args", "kwargs", "chain",
    "instrumented",
)  # fmt: skip
# ``eta``: the latest attempt's (a retry is re-sent with its own ETA), else the first known.
EARLIEST = ("sent_at", "received_at", "started_at", "seen_at")
LATEST = ("finished_at", "runtime", "result", "exc_type", "exc_message", "traceback")
STATE = ("state", "state_attempt", "state_rank", "state_ts")

_NEWER = (
    "(excluded.state_attempt, excluded.state_rank, excluded.state_ts)"
    " > (tasks.state_attempt, tasks.state_rank, tasks.state_ts)"
)
_RICHER = "excluded.detail_rank > tasks.detail_rank"
_AS_RICH = "excluded.detail_rank >= tasks.detail_rank"


def merge_set(least: str = "MIN", greatest: str = "MAX") -> list[str]:
    """The ``SET`` clauses of :data:`UPSERT_TASK`: how a stored row takes in a new one.

    The SQL every backend's upsert shares; only the names of the two-argument
    minimum and maximum differ (SQLite's ``MIN``, PostgreSQL's ``LEAST``).
    """
    return [
        *(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE tasks.{c} END" for c in STATE),
        f"worker = CASE WHEN {_NEWER} THEN COALESCE(excluded.worker, tasks.worker)"
        " ELSE COALESCE(tasks.worker, excluded.worker) END",
        # First known wins, except that stemtrace's own capture replaces what only
        # Celery's events said (repr strings, no structure).
        *(
            f"{c} = CASE WHEN {_RICHER} THEN COALESCE(excluded.{c}, tasks.{c})"
            f" ELSE COALESCE(tasks.{c}, excluded.{c}) END"
            for c in FIRST_KNOWN
        ),
        *(
            f"{c} = {least}(COALESCE(tasks.{c}, excluded.{c}), COALESCE(excluded.{c}, tasks.{c}))"
            for c in EARLIEST
        ),
        *(
            f"{c} = CASE WHEN {_AS_RICH} THEN COALESCE(excluded.{c}, tasks.{c})"
            f" ELSE COALESCE(tasks.{c}, excluded.{c}) END"
            for c in LATEST
        ),
        "eta = CASE WHEN excluded.eta IS NOT NULL AND excluded.retries > tasks.retries"
        " THEN excluded.eta ELSE COALESCE(tasks.eta, excluded.eta) END",
        f"retries = {greatest}(tasks.retries, excluded.retries)",
        f"updated_at = {greatest}(tasks.updated_at, excluded.updated_at)",
        "sources = tasks.sources | excluded.sources",
        f"detail_rank = {greatest}(tasks.detail_rank, excluded.detail_rank)",
    ]


_SET = merge_set()
UPSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in TASK_COLUMNS)})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(_SET)}"
)

INSERT_HISTORY = "INSERT INTO history (task_rowid, events) VALUES (?, ?)"
TOP_ROWID = "SELECT max(rowid) FROM tasks"
ROWIDS = "SELECT t.id, t.rowid FROM json_each(?) AS j JOIN tasks AS t ON t.id = j.value"

# What an event's history record leaves out of ``extra``: its own places, and
# what the task row holds.
_IN_RECORD = frozenset({"task_id", "eid", "kind", "ts", *HISTORY_COLUMNS})
_COVERED = _IN_RECORD | frozenset(ROW_FIELDS)
_COVERED_CELERY = _IN_RECORD | frozenset(CELERY_ROW_FIELDS)

UPSERT_CURSOR = """
INSERT INTO cursors (source, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""


_TRANSIENT = ("locked", "busy", "disk", "full", "i/o", "readonly", "unable to open", "interrupt")


def is_transient(exc: BaseException) -> bool:
    """Whether a write failed because of the database (locked, full, I/O), not the events.

    Such a batch is written again later, whole; any other failure is the
    events' and costs only the ones that cause it.
    """
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(word in message for word in _TRANSIENT)
    return isinstance(exc, OSError | MemoryError)


@dataclass
class IngestResult:
    task_events: int = 0
    worker_events: int = 0
    task_ids: AbstractSet[str] = frozenset()
    """The tasks the batch touched."""
    workers: AbstractSet[str] = frozenset()
    """The workers whose own events (online, heartbeat, offline) the batch held."""


def task_row(event: ev.Event, now: float) -> list[Any]:
    """The ``tasks`` row one event contributes (``None`` where it knows nothing).

    This runs for every event, so it is written for speed: one ``get`` per
    field, no helper calls but the remembered state key.
    """
    get = event.get
    kind = event["kind"]
    task_id = event["task_id"]
    ts = event["ts"]
    retries = get("retries")
    state, attempt, rank = _state_key(kind, retries)
    parent_id = get("parent_id")
    if parent_id == task_id:  # a retry names itself as parent
        parent_id = None
    terminal = state in _TERMINAL
    if get("source") == "celery":
        # Celery's events carry repr strings: they stay in the history, and the
        # row keeps room for stemtrace's structured capture whenever it arrives.
        args = kwargs = result = None
        sources, detail_rank = SOURCE_CELERY, 1
        instrumented = get("instrumented")
    else:
        args = get("args")
        if args is not None:
            args = _dumps(args)
        kwargs = get("kwargs")
        if kwargs is not None:
            kwargs = _dumps(kwargs)
        result = get("result") if kind == _SUCCEEDED else None
        if result is not None:
            result = _dumps(result)
        sources, detail_rank = SOURCE_CAPTURE, 2
        instrumented = True if kind == _SENT else get("instrumented")
    chain = get("chain")
    failed = kind == _FAILED
    return [
        task_id, get("name"), state, attempt, rank, ts, parent_id,
        get("root_id"), get("group_id"), get("group_index"), get("chord_id"), get("chord_name"),
        get("trace_id"), get("worker"),
        retries if type(retries) is int and retries > 0 else 0,
        get("queue"), get("routing_key"), get("eta"), get("expires"),
        ts if kind == _SENT else None,
        ts if kind == _RECEIVED else None,
        ts if kind == _STARTED else None,
        ts if terminal else None,
        get("runtime") if terminal else None,
        args, kwargs, result,
        get("exc_type") if failed else None,
        get("exc_message") if failed else None,
        get("traceback") if failed else None,
        _dumps(chain) if chain else None,
        None if instrumented is None else int(bool(instrumented)),
        ts, now, sources, detail_rank,
    ]  # fmt: skip


_TERMINAL = states.TERMINAL
_SENT, _RECEIVED, _STARTED, _SUCCEEDED, _FAILED = (
    ev.SENT, ev.RECEIVED, ev.STARTED, ev.SUCCEEDED, ev.FAILED
)  # fmt: skip


def _state_key(kind: str, retries: Any) -> tuple[str, int, int]:
    """:func:`stemtrace.core.states.state_key`, remembered for the few pairs that occur."""
    if retries is not None and type(retries) is not int:
        return states.state_key(kind, retries)
    key = (kind, retries)
    found = _state_keys.get(key)
    if found is None:
        found = states.state_key(kind, retries)
        if len(_state_keys) < 4096:
            _state_keys[key] = found
    return found


_state_keys: dict[tuple[str, Any], tuple[str, int, int]] = {}


_COL = {name: i for i, name in enumerate(TASK_COLUMNS)}
_STATE_COLS = tuple(_COL[c] for c in STATE)
_STATE_TS = _COL["state_ts"]
_WORKER = _COL["worker"]
_FIRST_COLS = tuple(_COL[c] for c in FIRST_KNOWN)
_EARLIEST_COLS = tuple(_COL[c] for c in EARLIEST)
_LATEST_COLS = tuple(_COL[c] for c in LATEST)
_RETRIES = _COL["retries"]
_ETA = _COL["eta"]
_UPDATED = _COL["updated_at"]
_SOURCES = _COL["sources"]
_RANK = _COL["detail_rank"]
_CHAIN, _CHORD = _COL["chain"], _COL["chord_id"]

SOURCE_CAPTURE = 1
SOURCE_CELERY = 2


def merge_rows(old: list[Any], new: list[Any]) -> None:
    """Merge ``new`` into ``old`` in place by the same rules as :data:`UPSERT_TASK`.

    Events of one task in one batch collapse into one row before SQLite sees
    them, which saves most of the index updates. One helper call a merge, no
    more: this runs for most events.
    """
    # The state of the later event by state key, and the worker that reported it.
    a, r, t = _STATE_COLS[1:]
    if (new[a], new[r], new[t]) > (old[a], old[r], old[t]):
        for i in _STATE_COLS:
            old[i] = new[i]
        if new[_WORKER] is not None:
            old[_WORKER] = new[_WORKER]
    elif old[_WORKER] is None:
        old[_WORKER] = new[_WORKER]
    _merge_details(old, new)
    if new[_RETRIES] > old[_RETRIES]:
        old[_RETRIES] = new[_RETRIES]
    if new[_UPDATED] > old[_UPDATED]:
        old[_UPDATED] = new[_UPDATED]
    old[_SOURCES] |= new[_SOURCES]


def _merge_details(old: list[Any], new: list[Any]) -> None:
    """First-known, earliest and latest columns, then the detail rank they were weighed by."""
    if new[_ETA] is not None and (old[_ETA] is None or new[_RETRIES] > old[_RETRIES]):
        old[_ETA] = new[_ETA]
    richer = new[_RANK] > old[_RANK]
    for i in _FIRST_COLS:
        if old[i] is None or (richer and new[i] is not None):
            old[i] = new[i]
    for i in _EARLIEST_COLS:
        value = new[i]
        if value is not None and (old[i] is None or value < old[i]):
            old[i] = value
    as_rich = new[_RANK] >= old[_RANK]
    for i in _LATEST_COLS:
        if new[i] is not None and (as_rich or old[i] is None):
            old[i] = new[i]
    if richer:
        old[_RANK] = new[_RANK]


_TEXT_COLS = tuple(_COL[c] for c in ("args", "kwargs", "exc_type", "exc_message"))


def _has_text(row: list[Any]) -> bool:
    """Whether a row brings text ``q`` searches that a first event may not have had."""
    return any(row[i] is not None for i in _TEXT_COLS)


def _extra_fields(names: tuple[str, ...], from_celery: bool) -> tuple[str, ...]:
    """The fields of an event with these ``names`` that go into its ``extra`` JSON, sorted."""
    key = (names, from_celery)
    found = _extra_by_names.get(key)
    if found is None:
        if len(_extra_by_names) >= 4096:
            _extra_by_names.clear()
        found = tuple(sorted(set(names) - (_COVERED_CELERY if from_celery else _COVERED)))
        _extra_by_names[key] = found
    return found


# Events of one producer share a few sets of field names: what goes to
# ``extra`` is worked out once per set.
_extra_by_names: dict[tuple[tuple[str, ...], bool], tuple[str, ...]] = {}


def history_record(event: ev.Event) -> list[Any]:
    """The history record (:data:`~stemtrace.store.schema.HISTORY_RECORD`) of a task event."""
    rest = _extra_fields(tuple(event), event.get("source") == "celery")
    return [
        *map(event.get, _RECORD_FIELDS),
        {name: event[name] for name in rest} if rest else None,
    ]


_RECORD_FIELDS = HISTORY_RECORD[:-1]  # all but ``extra``


Merged = dict[str, tuple[list[Any], list[list[Any]]]]
"""Per task of a batch: its merged row (:data:`TASK_COLUMNS`) and its events' history records."""


def collect(batch: Iterable[ev.Event], now: float) -> tuple[Merged, list[ev.Event], IngestResult]:
    """A batch as each backend writes it: task rows merged per task with their history
    records, the worker events in order, and what the batch held."""
    merged: Merged = {}
    worker_events: list[ev.Event] = []
    task_kinds = ev.TASK_KINDS
    task_events = 0
    for event in batch:
        if event["kind"] in task_kinds:
            row = task_row(event, now)
            known = merged.get(row[0])
            if known is None:
                merged[row[0]] = (row, [history_record(event)])
            else:
                merge_rows(known[0], row)
                known[1].append(history_record(event))
            task_events += 1
        else:
            worker_events.append(event)
    result = IngestResult(
        task_events=task_events,
        worker_events=len(worker_events),
        task_ids=merged.keys(),
        workers={e.get("worker") or e["host"] for e in worker_events},
    )
    return merged, worker_events, result


class Ingestor:
    """Applies batches of events to the store through the writer connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def ingest(
        self,
        batch: Iterable[ev.Event],
        cursor: tuple[str, str] | None = None,
        skipped: Sequence[Skip] = (),
    ) -> IngestResult:
        """Write a batch, the cursor that covers it and what it skipped, in one transaction."""
        now = time.time()
        merged, worker_events, result = collect(batch, now)
        task_rows = [row for row, _ in merged.values()]
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if merged:
                top = conn.execute(TOP_ROWID).fetchone()[0] or 0
                conn.executemany(UPSERT_TASK, task_rows)
                rowids = dict(conn.execute(ROWIDS, (_dumps(list(merged)),)))
                conn.executemany(
                    INSERT_HISTORY,
                    [(rowids[tid], _dumps(records)) for tid, (_, records) in merged.items()],
                )
                search.touched(conn, [row[0] for row in task_rows if _has_text(row)])
                tally.tally(
                    conn, rowids.values(), _dumps, tally.Written(task_rows, _COL, rowids, top)
                )
                planned.remember(
                    conn,
                    [(rowids[row[0]], row[_CHAIN], row[_CHORD]) for row in task_rows
                     if row[_CHAIN] is not None or row[_CHORD] is not None],
                )  # fmt: skip
            if worker_events:
                fleet_writes.worker_events(conn, worker_events, now)
            fleet_writes.touch(conn, [(row[_WORKER], row[_STATE_TS]) for row in task_rows])
            if skipped:
                skipped_input.record(conn, skipped, cursor[0] if cursor else "", now)
            if cursor is not None:
                conn.execute(UPSERT_CURSOR, (cursor[0], cursor[1], now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result
