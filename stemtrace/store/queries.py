"""Read queries behind the API and the pages; every function takes a read connection."""

from __future__ import annotations

import base64
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stemtrace.core import states
from stemtrace.core.bounds import MARKER, bound
from stemtrace.store import planned, ranked, search
from stemtrace.store.dbapi import Executes
from stemtrace.store.migrations import HISTORY_COLUMNS, HISTORY_RECORD

LIST_COLUMNS = (
    "id", "name", "state", "worker", "trace_id", "root_id", "parent_id", "group_id", "retries",
    "queue", "seen_at", "sent_at", "received_at", "started_at", "finished_at", "runtime",
    "exc_type", "exc_message", "eta",
)  # fmt: skip

FLOW_COLUMNS = (
    "id", "name", "state", "parent_id", "root_id", "group_id", "group_index", "chord_id",
    "chord_name", "trace_id", "worker", "retries", "seen_at", "sent_at", "received_at",
    "started_at", "finished_at", "runtime", "chain", "exc_type",
)  # fmt: skip

JSON_COLUMNS = ("args", "kwargs", "result", "chain")
_SEEN_AT = LIST_COLUMNS.index("seen_at")
_ID = LIST_COLUMNS.index("id")


class BadCursor(ValueError):
    """A pagination cursor that this server did not make."""


@dataclass(frozen=True)
class TaskFilters:
    states: tuple[str, ...] = ()
    name: str | None = None
    worker: str | None = None
    trace_id: str | None = None
    root_id: str | None = None
    q: str | None = None
    since: float | None = None
    until: float | None = None
    queue: str | None = None
    sort: str | None = None
    """``None``: newest first; else one of :data:`ranked.SORTS`, longest first (see there)."""


def encode_cursor(seen_at: float, task_id: str) -> str:
    raw = json.dumps([seen_at, task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        seen_at, task_id = json.loads(raw)
        if isinstance(seen_at, int | float) and isinstance(task_id, str):
            task_id.encode("utf-8")  # a lone surrogate cannot be bound as a parameter
            if math.isfinite(float(seen_at)):
                return float(seen_at), task_id
    except (ValueError, TypeError, OverflowError):
        pass
    raise BadCursor("invalid cursor: pass the next_cursor of a previous page")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_tasks(
    conn: sqlite3.Connection, filters: TaskFilters, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first (by first-seen time), ``limit`` rows and the cursor of the next page.

    ``q`` of three characters or more checks only the rows :func:`search.narrow`
    leaves, with the same ``LIKE``, newest spans first until the page is final;
    otherwise, or for a common text, it scans.
    """
    if filters.sort is not None:
        return _ranked(conn, filters, cursor, limit)
    rest, params = page_sql(filters, cursor, limit)
    with search.snapshot(conn):
        narrowed = search.narrow(conn, filters.q) if filters.q else None
        found = None if narrowed is None else _narrowed_page(conn, narrowed, rest, params, limit)
        if found is None:
            scan = f"SELECT {', '.join(LIST_COLUMNS)} FROM tasks{rest}"
            found = conn.execute(scan, params).fetchall()
        rows = [list_row(row) for row in found]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["seen_at"], rows[-1]["id"])
    return rows, next_cursor


def _ranked(
    conn: sqlite3.Connection, filters: TaskFilters, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page sorted by :attr:`TaskFilters.sort` (:mod:`stemtrace.store.ranked`)."""
    if filters.since is None:  # a sort reads every row it ranks: never the whole table
        raise ValueError("a sorted list needs a window: give since")
    where, params = _where(filters)
    try:
        found, next_cursor = ranked.page(
            conn, LIST_COLUMNS, where, params, str(filters.sort), cursor, limit
        )
    except ranked.BadSortCursor as exc:
        raise BadCursor(str(exc)) from None
    return [list_row(row) for row in found], next_cursor


def page_sql(filters: TaskFilters, cursor: str | None, limit: int) -> tuple[str, list[Any]]:
    """The ``WHERE``, ``ORDER BY`` and ``LIMIT`` of one page, and their parameters."""
    where, params = _where(filters)
    if cursor is not None:
        seen_at, task_id = decode_cursor(cursor)
        where.append("(seen_at < ? OR (seen_at = ? AND id < ?))")
        params.extend([seen_at, seen_at, task_id])
    rest = (" WHERE " + " AND ".join(where) if where else "") + (
        " ORDER BY seen_at DESC, id DESC LIMIT ?"
    )
    params.append(limit + 1)
    return rest, params


def _where(filters: TaskFilters) -> tuple[list[str], list[Any]]:
    """The conditions of ``filters`` and their parameters (``q`` as SQLite's ``LIKE``, which
    ignores the case of ASCII letters only: PostgreSQL's spelling is in ``store.pg.search``)."""
    where: list[str] = []
    params: list[Any] = []
    if filters.states:
        where.append(f"state IN ({', '.join('?' for _ in filters.states)})")
        params.extend(filters.states)
    for column in ("name", "worker", "trace_id", "root_id", "queue"):
        value = getattr(filters, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if filters.since is not None:
        where.append("seen_at >= ?")
        params.append(filters.since)
    if filters.until is not None:
        where.append("seen_at < ?")
        params.append(filters.until)
    if filters.q:
        pattern = _like(filters.q)
        columns = search.TEXT_COLUMNS
        where.append("(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in columns) + ")")
        params.extend([pattern] * len(columns))
    return where, params


def _narrowed_page(
    conn: sqlite3.Connection, narrowed: search.Narrowed, rest: str, params: list[Any], limit: int
) -> list[Any] | None:
    """The page among the rows the text index leaves (the same ``LIKE`` decides on them).

    ``None`` when the walk through them grew too long: the caller scans then.
    """
    select = f" SELECT {', '.join(LIST_COLUMNS)} FROM found CROSS JOIN tasks"
    select += f" ON tasks.rowid = found.r{rest}"
    first = f"WITH found(r) AS ({search.FOUND}){select}"
    more = f"WITH found(r) AS ({search.MORE}){select}"
    found: list[Any] = []
    for round_, (candidates, newest_left) in enumerate(narrowed.rounds(limit + 1)):
        if round_ == 0:
            found = conn.execute(first, [candidates, narrowed.position, *params]).fetchall()
        else:
            found = _newest(found, conn.execute(more, [candidates, *params]), limit + 1)
        if newest_left is None or (len(found) > limit and found[limit][_SEEN_AT] > newest_left):
            return found
    return None


def _newest(known: list[Any], more: Iterable[Any], most: int) -> list[Any]:
    """The ``most`` newest of two sets of rows, in the ``ORDER BY`` of :func:`list_tasks`.

    Ids compare as SQLite's BINARY collation does (UTF-8 bytes, code point order).
    """
    rows = {row[_ID]: row for row in known}
    rows.update((row[_ID], row) for row in more)
    return sorted(rows.values(), key=lambda row: (row[_SEEN_AT], row[_ID]), reverse=True)[:most]


def list_row(row: Sequence[Any]) -> dict[str, Any]:
    found = dict(zip(LIST_COLUMNS, row, strict=True))
    found["queue_wait"] = _span(found["sent_at"], found["started_at"])
    message = found["exc_message"]
    if isinstance(message, str) and len(message) > 300:
        found["exc_message"] = message[:300] + "…"
    return found


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(end - start, 0.0), 6)


def load_json(text: Any) -> Any:
    """A stored JSON column as a value within :func:`stemtrace.core.bounds.bound`'s caps.

    Whatever an older version let into the store (nesting past Python's limit,
    say) reads as a marker, not an error.
    """
    if text is None:
        return None
    try:
        return bound(json.loads(text))
    except ValueError:
        return text
    except RecursionError:
        return {MARKER: "truncated", "preview": str(text)[:200], "length": len(str(text))}


def get_task(conn: sqlite3.Connection, task_id: str) -> dict[str, Any] | None:
    """The whole row of one task (JSON columns decoded), or ``None``."""
    cursor = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    return task_from_row(dict(zip([d[0] for d in cursor.description], row, strict=True)))


def task_from_row(found: dict[str, Any]) -> dict[str, Any]:
    """A ``tasks`` row as :func:`get_task` gives it, JSON decoded (either backend's)."""
    for column in JSON_COLUMNS:
        found[column] = load_json(found[column])
    found["instrumented"] = None if found["instrumented"] is None else bool(found["instrumented"])
    found["queue_wait"] = _span(found["sent_at"], found["started_at"])
    bits = found.pop("sources") or 1
    found["sources"] = [name for bit, name in ((1, "stemtrace"), (2, "celery")) if bits & bit]
    for internal in ("state_attempt", "state_rank", "state_ts", "detail_rank"):
        found.pop(internal)
    return found


def task_events(conn: sqlite3.Connection, task_id: str) -> list[dict[str, Any]]:
    """The task's event history in lifecycle order (see :func:`_lifecycle_order`).

    Each event has ``eid``, ``kind``, ``ts``, ``task_id``, ``host`` and ``pid``,
    and those of its other fields that are not the task's own (``worker``,
    ``retries``, ``runtime``, the exception of a retry ...).
    """
    rows = conn.execute(
        "SELECT events FROM history WHERE task_rowid = (SELECT rowid FROM tasks WHERE id = ?)",
        (task_id,),
    ).fetchall()
    return history_events(task_id, [records for (records,) in rows])


def history_events(task_id: str, rows: Iterable[str]) -> list[dict[str, Any]]:
    """The events of a task's history rows (as written) as :func:`task_events` gives them."""
    found = []
    seen: set[Any] = set()
    for records in rows:
        for record in _history_records(records):
            eid, kind, ts, *values, extra = record
            if eid in seen:  # delivered twice
                continue
            seen.add(eid)
            event: dict[str, Any] = {}
            if isinstance(extra, dict):
                event.update(extra)
            event.update(
                (name, value)
                for name, value in zip(HISTORY_COLUMNS, values, strict=True)
                if value is not None or name in _ALWAYS
            )
            event.update(eid=eid, kind=kind, ts=ts, task_id=task_id)
            found.append(event)
    found.sort(key=_by_ts)
    found.sort(key=_lifecycle_order)
    return _without_echoes(found)


_ALWAYS = frozenset({"host", "pid"})


def _history_records(text: str) -> list[list[Any]]:
    """The well-formed records of one history row (a damaged row yields none)."""
    try:
        records = json.loads(text)
    except (ValueError, RecursionError):
        return []
    if not isinstance(records, list):
        return []
    width = len(HISTORY_RECORD)
    return [
        [*r[:-1], bound(r[-1])]
        for r in records
        if isinstance(r, list) and len(r) == width and isinstance(r[0], str)
    ]


def _by_ts(event: dict[str, Any]) -> Any:
    ts = event["ts"]
    return ts if isinstance(ts, int | float) else 0.0


def _without_echoes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop Celery's events that repeat a transition stemtrace's capture recorded."""
    captured = {(e["kind"], e.get("retries")) for e in history if e.get("source") != "celery"}
    kinds = {kind for kind, _ in captured}
    return [
        e
        for e in history
        if e.get("source") != "celery"
        or not (
            (e["kind"], e.get("retries")) in captured
            or (e.get("retries") is None and e["kind"] in kinds)
        )
    ]


def _lifecycle_order(event: dict[str, Any]) -> tuple[int, int, float]:
    """Precedence first, time second: clocks of different hosts may disagree."""
    if event["kind"] not in states.KIND_STATE:
        return (states.TERMINAL_ATTEMPT + 1, 0, event["ts"])
    retries = event.get("retries")
    _, attempt, rank = states.state_key(
        event["kind"], retries if isinstance(retries, int) else None
    )
    return (attempt, rank, event["ts"])


def children(conn: sqlite3.Connection, task_id: str, limit: int = 500) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(LIST_COLUMNS)} FROM tasks WHERE parent_id = ? AND id != ?"
        " ORDER BY seen_at, id LIMIT ?",
        (task_id, task_id, limit),
    )
    return [list_row(row) for row in rows]


def flow_rows(conn: Executes, task_id: str, limit: int = 100_000) -> list[dict[str, Any]] | None:
    """Every task in the flow containing ``task_id`` (or the group ``task_id``).

    ``task_id`` may also be an id that some task named in advance without it
    running (yet): a chain link, a chord callback (see :mod:`stemtrace.store.planned`).

    Follows root ids, group ids, parents and chord callbacks until nothing new
    turns up. ``None`` when nothing is known of ``task_id``. The rows come first seen
    first (ties by id), whatever order the database found them in: the graph built
    from them lists its nodes in their order, the same on every backend and every read.
    """
    seeds = (
        _fetch(conn, "id", [task_id])
        or _fetch(conn, "group_id", [task_id])
        or _fetch(conn, "id", [planned.named_by(conn, task_id) or ""])
    )
    if not seeds:
        return None
    found: dict[str, dict[str, Any]] = {row["id"]: row for row in seeds}
    asked: dict[str, set[str]] = {"root_id": set(), "group_id": set(), "id": {task_id}}
    fresh = list(found.values())
    while fresh and len(found) < limit:
        wanted: dict[str, set[str]] = {"root_id": set(), "group_id": set(), "id": set()}
        for row in fresh:
            for column, value in (
                ("root_id", row["root_id"] or row["id"]),  # a root whose own root is unknown
                ("group_id", row["group_id"]),
                ("id", row["parent_id"]),
                ("id", row["chord_id"]),
            ):
                if not value or value in asked[column]:
                    continue
                if column != "id" or value not in found:
                    wanted[column].add(value)
        fresh = []
        for column, values in wanted.items():
            asked[column] |= values
            for row in _fetch_new(conn, column, sorted(values), found):
                found[row["id"]] = row
                fresh.append(row)
    return sorted(found.values(), key=lambda row: (row["seen_at"], row["id"]))


def _fetch_new(
    conn: Executes, column: str, values: Sequence[str], known: dict[str, Any]
) -> list[dict[str, Any]]:
    """The rows whose ``column`` is in ``values`` and whose id is not in ``known``.

    For groups, ids first (cheap, from the index) and whole rows only for the
    new ones: a big group's members are usually known already through their
    root. The tasks of a root are mostly new: their rows come at once.
    """
    if column == "id":
        return _fetch(conn, "id", [v for v in values if v not in known])
    if column == "root_id":
        return [row for row in _fetch(conn, column, values) if row["id"] not in known]
    ids = _select_in(conn, f"SELECT id FROM tasks WHERE {column} IN", values)
    return _fetch(conn, "id", [task_id for (task_id,) in ids if task_id not in known])


def _fetch(conn: Executes, column: str, values: Sequence[str]) -> list[dict[str, Any]]:
    select = f"SELECT {', '.join(FLOW_COLUMNS)} FROM tasks WHERE {column} IN"
    return [_flow_row(row) for row in _select_in(conn, select, values)]


def _select_in(conn: Executes, select: str, values: Sequence[str], size: int = 2000) -> list[Any]:
    """The rows of ``select`` (ending in ``IN``) over ``values``, bound a chunk at a time."""
    rows: list[Any] = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        rows.extend(conn.execute(f"{select} ({', '.join('?' for _ in chunk)})", chunk))
    return rows


def _flow_row(row: tuple[Any, ...]) -> dict[str, Any]:
    found = dict(zip(FLOW_COLUMNS, row, strict=True))
    found["chain"] = load_json(found["chain"]) or []
    return found


TRACE_COLUMNS = tuple(dict.fromkeys(LIST_COLUMNS + FLOW_COLUMNS))


def trace_rows(conn: Executes, trace_id: str, limit: int = 10_000) -> list[dict[str, Any]]:
    """The trace's tasks in the order first seen: list fields and flow fields both."""
    rows = conn.execute(
        f"SELECT {', '.join(TRACE_COLUMNS)} FROM tasks WHERE trace_id = ?"
        " ORDER BY seen_at, id LIMIT ?",
        (trace_id, limit),
    )
    found = []
    for row in rows:
        task = list_row(row[: len(LIST_COLUMNS)])
        task.update(zip(TRACE_COLUMNS[len(LIST_COLUMNS) :], row[len(LIST_COLUMNS) :], strict=True))
        task["chain"] = load_json(task["chain"]) or []
        found.append(task)
    return found


def listed(task: dict[str, Any]) -> dict[str, Any]:
    """A :func:`trace_rows` row with the fields :func:`list_tasks` gives."""
    return {name: task[name] for name in (*LIST_COLUMNS, "queue_wait")}


def counts(conn: Executes) -> dict[str, int]:
    """``{"tasks": n}``: the tasks stored with a name, from the rollups (no scan)."""
    tasks = conn.execute("SELECT coalesce(SUM(n), 0) FROM task_counts").fetchone()[0]
    return {"tasks": int(tasks)}


def group_page(
    conn: Executes, group_id: str, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(size, members)`` of a group in group order; its chord callback is not a member."""
    member = (
        "group_id = ? AND id NOT IN"
        " (SELECT chord_id FROM tasks WHERE group_id = ? AND chord_id IS NOT NULL)"
    )
    total = conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {member}", (group_id, group_id))
    size = int(total.fetchone()[0])
    rows = conn.execute(
        f"SELECT {', '.join(LIST_COLUMNS)} FROM tasks WHERE {member}"
        " ORDER BY group_index, seen_at LIMIT ? OFFSET ?",
        (group_id, group_id, limit, offset),
    )
    return size, [list_row(row) for row in rows]


def filter_choices(conn: Executes) -> dict[str, list[str]]:
    """The task names and workers the executions page offers as filters."""
    return {
        "names": [r[0] for r in conn.execute("SELECT name FROM registry ORDER BY name")],
        "workers": [r[0] for r in conn.execute("SELECT hostname FROM workers ORDER BY 1")],
    }


def is_empty(conn: Executes) -> bool:
    """Whether the store holds no task at all (the pages then say how to send some)."""
    return conn.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is None


def last_write(conn: Executes) -> float | None:
    """When a consumer last wrote a batch (a server without its own consumer watches this)."""
    row = conn.execute("SELECT MAX(updated_at) FROM cursors").fetchone()
    return row[0] if row else None


def cursor_position(conn: sqlite3.Connection, source: str) -> str | None:
    """How far the consumer of ``source`` has read, as its transport's position."""
    row = conn.execute("SELECT position FROM cursors WHERE source = ?", (source,)).fetchone()
    return str(row[0]) if row else None
