"""Digests the writer keeps beside the rollups: error groups, and the flows and traces to list.

Tables (migration 11):

* ``error_groups`` - per task name and fingerprint (:func:`stemtrace.core.errors.fingerprint`:
  the exception type and its normalized message): the type, the normalized
  message, when first and last seen, and the latest failed task's id;
  ``error_hours`` - how many failed per hour, for counts over a range and sparklines.
* ``flow_index`` - per flow key (the root task's id; for a group sent from
  outside a task, the group's id) the tasks stored besides the one whose id
  the key is, how many of them are broken and how many still running, first
  seen and last moved. A flow with any such task is a workflow (it chained,
  fanned out or spawned) and is listed; the key's own task is added when
  read. Lone tasks, most tasks, write nothing here.
* ``trace_index`` - the same per trace id (the task whose id it is added
  when read), and whether the id was set on purpose (``stemtrace.trace`` or
  the middleware: it is not the root task's id).

All are written by :func:`stemtrace.store.tally.tally` in the batch's
transaction, from each row's change since it was last counted, so they
count each task once; retention takes deleted tasks out (:func:`forget`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from stemtrace.core import errors, states
from stemtrace.store.dbapi import Executes

HOUR = 3600

_UPSERT_GROUP = """
INSERT INTO error_groups (name, fingerprint, exc_type, message, first_seen, last_seen, last_task_id)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name, fingerprint) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen),
    last_task_id = CASE WHEN excluded.last_seen >= last_seen
        THEN excluded.last_task_id ELSE last_task_id END,
    last_seen = max(last_seen, excluded.last_seen)
"""
_UPSERT_HOUR = """
INSERT INTO error_hours (name, fingerprint, t, n) VALUES (?, ?, ?, ?)
ON CONFLICT (name, fingerprint, t) DO UPDATE SET n = n + excluded.n
"""


def _upsert_index(table: str, key: str, extra: str = "") -> str:
    more = f", {extra}" if extra else ""
    values = ", ?" if extra else ""
    also = f", {extra} = max({extra}, excluded.{extra})" if extra else ""
    return f"""
INSERT INTO {table} ({key}, first_seen, last_seen, tasks, failures, running{more})
VALUES (?, ?, ?, ?, ?, ?{values})
ON CONFLICT ({key}) DO UPDATE SET
    first_seen = min(coalesce(first_seen, excluded.first_seen),
        coalesce(excluded.first_seen, first_seen)),
    last_seen = max(coalesce(last_seen, excluded.last_seen),
        coalesce(excluded.last_seen, last_seen)),
    tasks = tasks + excluded.tasks, failures = failures + excluded.failures,
    running = running + excluded.running{also}
"""


_UPSERT_FLOW = _upsert_index("flow_index", "key")
_UPSERT_TRACE = _upsert_index("trace_index", "trace_id", "explicit")
SQLITE = {
    "group": _UPSERT_GROUP, "hour": _UPSERT_HOUR, "flow": _UPSERT_FLOW, "trace": _UPSERT_TRACE,
}  # fmt: skip
"""SQLite's statement of each write :meth:`Digests.writes` names."""


def flow_key(row: dict[str, Any], root: dict[str, Any] | None = None) -> str:
    """The flow a row is listed under: its root's, or its group when it is its own root.

    A root that is itself a member of a group sent from outside a task (a
    chord's header member, the root of the chord's callback) is listed under
    that group, so a chord is one flow. ``root``: the row of ``row``'s root,
    when stored. (:data:`stemtrace.store.tally.TALLY_COLUMNS` works it out in
    SQL, the same way.)
    """
    task_id: str = row["id"]
    root_id = row["root_id"]
    if root_id and root_id != task_id:
        if root is not None and (root["root_id"] or root["id"]) == root["id"] and root["group_id"]:
            return str(root["group_id"])
        return str(root_id)
    return str(row["group_id"] or task_id)


Index = dict[str, list[Any]]
"""Per flow or trace key: first seen, last moved, tasks, failures, running, explicit."""


def _into(index: Index, key: str, seen: Any, moved: Any, changes: tuple[int, int, int]) -> None:
    """Add ``changes`` to the entry of ``key``; widen its first seen and last moved."""
    entry = index.get(key)
    if entry is None:
        index[key] = [seen, moved, changes[0], changes[1], changes[2], 0]
        return
    if seen is not None and (entry[0] is None or seen < entry[0]):
        entry[0] = seen
    if moved is not None and (entry[1] is None or moved > entry[1]):
        entry[1] = moved
    entry[2] += changes[0]
    entry[3] += changes[1]
    entry[4] += changes[2]


Share = tuple[int, int, int]
NOTHING: Share = (0, 0, 0)


def share(state: str | None) -> Share:
    """What one task in ``state`` adds to an index: a task, broken or not, running or not."""
    if state is None:
        return NOTHING
    return 1, int(state in states.BROKEN), int(state not in states.TERMINAL)


def _minus(one: Share) -> Share:
    return -one[0], -one[1], -one[2]


class Digests:
    """What one batch adds to the digests."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], list[Any]] = {}
        self.hours: dict[tuple[str, str, int], int] = defaultdict(int)
        self.flows: Index = {}
        self.traces: Index = {}
        self._grouped: dict[tuple[str | None, str], tuple[str, str]] = {}

    def add(
        self,
        listed: tuple[str | None, str | None, str | None, str | None],
        times: tuple[Any, Any],
        was: Share,
        now: Share,
        root_id: str | None,
    ) -> None:
        """Count a task as ``now`` under its flow and trace, out of where it counted as ``was``.

        ``listed``: the flow and trace it counted under, then the ones it counts
        under now (``None``: under none); ``times``: when first seen, when it last moved.
        """
        old_flow, old_trace, flow, trace = listed
        seen, moved = times
        for index, old_key, key in ((self.flows, old_flow, flow), (self.traces, old_trace, trace)):
            if old_key == key:
                if key is not None:
                    delta = (now[0] - was[0], now[1] - was[1], now[2] - was[2])
                    _into(index, key, seen, moved, delta)
                continue
            if old_key is not None:
                _into(index, old_key, None, None, _minus(was))
            if key is not None:
                _into(index, key, seen, moved, now)
        if trace is not None:
            self.traces[trace][5] |= int(trace != root_id)

    def failed(self, name: str, task_id: str, exc_type: Any, exc_message: Any, at: Any) -> None:
        """A failure counted for the first time (``at``: when): its error group and hour."""
        message = exc_message if isinstance(exc_message, str) else ""
        exc_type = exc_type if isinstance(exc_type, str) else None
        # The same error fails many tasks: its fingerprint is worked out once a batch.
        grouped = self._grouped.get((exc_type, message))
        if grouped is None:
            text = errors.normalize(message)
            grouped = errors.fingerprint_normalized(exc_type, text), text
            if len(self._grouped) < 10_000:
                self._grouped[exc_type, message] = grouped
        key = (name, grouped[0])
        known = self.groups.get(key)
        if known is None:
            self.groups[key] = [exc_type, grouped[1], at, at, task_id]
        else:
            known[2] = min(known[2], at)
            if at >= known[3]:
                known[3], known[4] = at, task_id
        self.hours[(*key, int(at // HOUR) * HOUR)] += 1

    def writes(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """``(statement, rows)`` to write, the statements named as in :data:`SQLITE`."""
        return [
            ("group", [(*k, *v) for k, v in self.groups.items()]),
            ("hour", [(*k, n) for k, n in self.hours.items()]),
            ("flow", [(k, *i[:5]) for k, i in self.flows.items()]),
            ("trace", [(k, *i) for k, i in self.traces.items()]),
        ]


FORGET_COLUMNS = ("tally_state", "tally_flow", "tally_trace")


def forget(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Take rows about to be deleted out of the flow and trace indexes."""
    flows, traces = forgotten(rows)
    conn.executemany(_UPSERT_FLOW, flows)
    conn.executemany(_UPSERT_TRACE, traces)
    conn.executemany("DELETE FROM flow_index WHERE key = ? AND tasks <= 0", [r[:1] for r in flows])
    conn.executemany(
        "DELETE FROM trace_index WHERE trace_id = ? AND tasks <= 0", [r[:1] for r in traces]
    )


def forgotten(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The flow and trace index rows (of :data:`SQLITE`'s ``flow`` and ``trace``) that
    take ``rows`` (:data:`FORGET_COLUMNS`) out."""
    flows: Index = {}
    traces: Index = {}
    for row in rows:
        state = row["tally_state"]
        if state is None:
            continue
        if row["tally_flow"] is not None:
            _into(flows, row["tally_flow"], None, None, _minus(share(state)))
        if row["tally_trace"] is not None:
            _into(traces, row["tally_trace"], None, None, _minus(share(state)))
    return (
        [(k, *i[:5]) for k, i in flows.items()],
        [(k, *i[:5], 0) for k, i in traces.items()],
    )


def prune(conn: Executes, before: float) -> None:
    """Drop error counts of hours that ended before ``before``, and groups with none left."""
    conn.execute("DELETE FROM error_hours WHERE t + ? <= ?", (HOUR, before))
    conn.execute("DELETE FROM error_groups WHERE last_seen < ?", (before,))
