"""What PostgreSQL's writer stores of the workers: the same rules as SQLite's.

The rows, gaps and task definitions follow :mod:`stemtrace.store.fleet_writes`
statement for statement (SQLite's two-argument ``MAX`` is ``GREATEST`` here;
each is given non-null arguments, where the two agree), so that a batch leaves
the same worker rows in either store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import Connection

from stemtrace.core import events as ev
from stemtrace.core import jsonio
from stemtrace.core.coerce import number, text_of
from stemtrace.store.fleet_writes import _dict_or_none, _json_or_none, _num, allowed_silence

Conn = Connection[tuple[Any, ...]]

_SEEN = (
    "INSERT INTO workers (hostname, state, last_seen) VALUES (%s, 'online', %s)"
    " ON CONFLICT (hostname) DO UPDATE SET last_seen = GREATEST(workers.last_seen,"
    " excluded.last_seen)"
)
_KNOWN = (
    "INSERT INTO workers (hostname, state, last_seen) VALUES (%s, 'online', %s)"
    " ON CONFLICT (hostname) DO NOTHING"
)
_ONLINE = """UPDATE workers SET
    state = CASE WHEN offline_at IS NULL OR offline_at < %s THEN 'online' ELSE state END,
    online_at = GREATEST(COALESCE(online_at, 0), %s),
    last_seen = GREATEST(last_seen, %s), pool = %s, concurrency = %s, sw_ver = %s,
    queues = %s, heartbeat_freq = %s, pid = %s
WHERE hostname = %s"""
_BEAT = """UPDATE workers SET
    last_seen = GREATEST(last_seen, %s),
    last_heartbeat = GREATEST(COALESCE(last_heartbeat, 0), %s),
    active = CASE WHEN %s >= COALESCE(last_heartbeat, 0) THEN %s ELSE active END,
    processed = GREATEST(COALESCE(processed, 0), COALESCE(%s, 0)),
    loadavg = CASE WHEN %s >= COALESCE(last_heartbeat, 0) THEN %s ELSE loadavg END,
    dropped = GREATEST(COALESCE(dropped, 0), COALESCE(%s, 0)),
    heartbeat_freq = COALESCE(%s, heartbeat_freq),
    state = CASE WHEN offline_at IS NULL OR offline_at < %s THEN 'online' ELSE state END
WHERE hostname = %s"""
_OFFLINE = """UPDATE workers SET
    offline_at = GREATEST(COALESCE(offline_at, 0), %s),
    last_seen = GREATEST(last_seen, %s),
    state = CASE WHEN COALESCE(online_at, 0) <= %s THEN 'offline' ELSE state END,
    dropped = GREATEST(COALESCE(dropped, 0), COALESCE(%s, 0))
WHERE hostname = %s"""
_GAP = 'INSERT INTO worker_gaps (hostname, start, "end") VALUES (%s, %s, %s) ON CONFLICT DO NOTHING'
_REGISTRY = """INSERT INTO registry (name, module, signature, queue, max_retries,
    default_retry_delay, autoretry_for, retry_backoff, rate_limit, time_limit,
    soft_time_limit, acks_late, ignore_result, workers, updated_at, retry_policy)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    module = excluded.module, signature = excluded.signature,
    queue = excluded.queue, max_retries = excluded.max_retries,
    default_retry_delay = excluded.default_retry_delay,
    autoretry_for = excluded.autoretry_for, retry_backoff = excluded.retry_backoff,
    rate_limit = excluded.rate_limit, time_limit = excluded.time_limit,
    soft_time_limit = excluded.soft_time_limit, acks_late = excluded.acks_late,
    ignore_result = excluded.ignore_result, retry_policy = excluded.retry_policy,
    workers = (SELECT jsonb_agg(value ORDER BY value)::text FROM (
        SELECT jsonb_array_elements(registry.workers::jsonb) AS value
        UNION SELECT jsonb_array_elements(excluded.workers::jsonb)) AS known),
    updated_at = excluded.updated_at"""


def touch(conn: Conn, seen: Iterable[tuple[str | None, float]]) -> None:
    """Workers seen through their tasks (``(worker, when)``) count as alive at that moment."""
    latest: dict[str, float] = {}
    for worker, ts in seen:
        if worker and ts > latest.get(worker, 0.0):
            latest[worker] = ts
    if latest:
        conn.cursor().executemany(_SEEN, sorted(latest.items()))


def worker_event(conn: Conn, event: ev.Event, now: float) -> None:
    """One online, heartbeat or offline event: the worker's row, its gaps, its definitions."""
    kind = event["kind"]
    hostname = event.get("worker") or event["host"]
    ts = event["ts"]
    if kind != ev.WORKER_OFFLINE:
        record_gap(conn, hostname, ts, online=kind == ev.WORKER_ONLINE, freq=event.get("freq"))
    conn.execute(_KNOWN, (hostname, ts))
    if kind == ev.WORKER_ONLINE:
        conn.execute(
            _ONLINE,
            (ts, ts, ts, event.get("pool"), event.get("concurrency"), event.get("sw_ver"),
             _json_or_none(event.get("queues")), event.get("freq"), event["pid"], hostname),
        )  # fmt: skip
        rows = registry_rows(hostname, event.get("tasks") or [], now)
        if rows:
            conn.cursor().executemany(_REGISTRY, rows)
    elif kind == ev.WORKER_HEARTBEAT:
        conn.execute(
            _BEAT,
            (ts, ts, ts, event.get("active"), event.get("processed"),
             ts, _json_or_none(event.get("loadavg")), event.get("dropped"), event.get("freq"),
             ts, hostname),
        )  # fmt: skip
    else:
        conn.execute(_OFFLINE, (ts, ts, ts, event.get("dropped"), hostname))


def record_gap(conn: Conn, hostname: str, ts: float, *, online: bool, freq: Any) -> None:
    """The gap a heartbeat (or an online event) at ``ts`` ends, if the worker was silent
    (:func:`stemtrace.store.fleet_writes.record_gap`)."""
    row = conn.execute(
        "SELECT last_heartbeat, online_at, offline_at, heartbeat_freq FROM workers"
        " WHERE hostname = %s",
        (hostname,),
    ).fetchone()
    if row is None or (row[0] is None and row[1] is None):
        return
    last_heartbeat, online_at, offline_at, known_freq = row
    last = max(last_heartbeat or 0.0, online_at or 0.0)
    allowed = allowed_silence(freq if number(freq) else known_freq)
    if ts <= last:
        _split(conn, hostname, ts, allowed)
    elif online and offline_at is not None and last < offline_at < ts:
        if offline_at - last > allowed:
            conn.execute(_GAP, (hostname, last, offline_at))
        conn.execute(_GAP, (hostname, offline_at, ts))
    elif ts - last > allowed:
        conn.execute(_GAP, (hostname, last, ts))


def _split(conn: Conn, hostname: str, ts: float, allowed: float) -> None:
    found = conn.execute(
        'SELECT start, "end" FROM worker_gaps WHERE hostname = %s AND start < %s'
        " ORDER BY start DESC LIMIT 1",
        (hostname, ts),
    ).fetchone()
    if found is None or found[1] <= ts:
        return
    start, end = found
    conn.execute("DELETE FROM worker_gaps WHERE hostname = %s AND start = %s", (hostname, start))
    if ts - start > allowed:
        conn.execute(_GAP, (hostname, start, ts))
    if end - ts > allowed:
        conn.execute(_GAP, (hostname, ts, end))


def _no_nul(value: Any) -> Any:
    """A text without NUL (PostgreSQL's text holds none): U+FFFD, as the writer stores it."""
    return value.replace("\x00", "\ufffd") if type(value) is str and "\x00" in value else value


def registry_rows(hostname: str, tasks: list[Any], now: float) -> list[tuple[Any, ...]]:
    """The ``registry`` rows an online event announces (as SQLite's writer makes them; a
    NUL in a definition's texts as U+FFFD: the event announcing it was refused whole)."""
    rows = []
    for task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("name"), str):
            continue
        rows.append(
            (
                task["name"], text_of(task.get("module")), text_of(task.get("signature")),
                text_of(task.get("queue")), _num(task.get("max_retries")),
                _num(task.get("default_retry_delay")),
                _json_or_none(task.get("autoretry_for") or None),
                text_of(task.get("retry_backoff")), text_of(task.get("rate_limit")),
                _num(task.get("time_limit")), _num(task.get("soft_time_limit")),
                _num(task.get("acks_late")), _num(task.get("ignore_result")),
                jsonio.dumps([hostname]), now,
                _json_or_none(_dict_or_none(task.get("retry_policy"))),
            )
        )  # fmt: skip
    return [tuple(_no_nul(value) for value in row) for row in rows]
