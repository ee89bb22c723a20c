"""What ingest writes of the workers: their rows, the task definitions they announce,
and the gaps in their heartbeats.

A gap (``worker_gaps``) is a silence longer than the worker's heartbeats allow
(:func:`allowed_silence`), closed by the heartbeat or online event that ends it,
or a time the worker was away (offline, then online again). Each is written
once, keyed by where it starts; an event that arrives late, inside a gap
already written, splits that gap at its time (and drops the pieces too short
to be gaps), so re-delivered and out-of-order events leave the same gaps as
events read in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from stemtrace.core import events as ev
from stemtrace.core import jsonio
from stemtrace.core.coerce import number, text_of

SILENCE_FACTOR = 2.5
"""Heartbeat periods a worker may miss before the silence counts as a gap."""
UNKNOWN_SILENCE = 60.0
"""Seconds of silence allowed a worker whose heartbeat period is not known."""


def allowed_silence(freq: Any) -> float:
    """The longest silence that is not a gap, for a worker beating every ``freq`` seconds."""
    period = number(freq)
    if period is None or not period > 0:
        return UNKNOWN_SILENCE
    return SILENCE_FACTOR * float(period)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else jsonio.dumps(value)


def touch(conn: sqlite3.Connection, seen: Iterable[tuple[str | None, float]]) -> None:
    """Workers seen through their tasks (``(worker, when)``) count as alive at that moment."""
    latest: dict[str, float] = {}
    for worker, ts in seen:
        if worker and ts > latest.get(worker, 0.0):
            latest[worker] = ts
    if latest:
        conn.executemany(
            "INSERT INTO workers (hostname, state, last_seen) VALUES (?, 'online', ?)"
            " ON CONFLICT (hostname)"
            " DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            list(latest.items()),
        )


def worker_events(conn: sqlite3.Connection, events: Iterable[ev.Event], now: float) -> None:
    """A batch's worker events, in order; a worker's heartbeats in a row (no online or
    offline of it between them) are written as one update, as if one by one."""
    beats: dict[str, list[ev.Event]] = {}
    for event in events:
        hostname = event.get("worker") or event["host"]
        if event["kind"] == ev.WORKER_HEARTBEAT:
            beats.setdefault(hostname, []).append(event)
            continue
        run = beats.pop(hostname, None)
        if run:
            _heartbeats(conn, hostname, run)
        worker_event(conn, event, now)
    for hostname, run in beats.items():
        _heartbeats(conn, hostname, run)


def _heartbeats(conn: sqlite3.Connection, hostname: str, run: list[ev.Event]) -> None:
    """Heartbeats of one worker in batch order: their gaps, then one update of its row."""
    if len(run) == 1:
        worker_event(conn, run[0], 0.0)
        return
    row = conn.execute(
        "SELECT last_heartbeat, online_at, heartbeat_freq FROM workers WHERE hostname = ?",
        (hostname,),
    ).fetchone()
    last_heartbeat, online_at, freq = row if row is not None else (None, None, None)
    for beat in run:  # each against the row as the beats before it left it
        ts = beat["ts"]
        if last_heartbeat is not None or online_at is not None:
            last = max(last_heartbeat or 0.0, online_at or 0.0)
            allowed = allowed_silence(beat.get("freq") if number(beat.get("freq")) else freq)
            if ts <= last:
                _split(conn, hostname, ts, allowed)
            elif ts - last > allowed:
                conn.execute(_GAP, (hostname, last, ts))
        last_heartbeat = max(last_heartbeat or 0.0, ts)
        if beat.get("freq") is not None:
            freq = beat.get("freq")
    latest = max(run, key=lambda beat: beat["ts"])  # the last of equals: max keeps the first
    latest = [beat for beat in run if beat["ts"] == latest["ts"]][-1]
    top = latest["ts"]
    conn.execute(
        "INSERT INTO workers (hostname, state, last_seen) VALUES (?, 'online', ?)"
        " ON CONFLICT (hostname) DO NOTHING",
        (hostname, run[0]["ts"]),
    )
    conn.execute(
        _BEAT,
        (top, top, top, latest.get("active"),
         max((b.get("processed") or 0 for b in run), default=0),
         top, _json_or_none(latest.get("loadavg")),
         max((b.get("dropped") or 0 for b in run), default=0),
         next((b["freq"] for b in reversed(run) if b.get("freq") is not None), None),
         top, hostname),
    )  # fmt: skip


_BEAT = """UPDATE workers SET
    last_seen = MAX(last_seen, ?),
    last_heartbeat = MAX(COALESCE(last_heartbeat, 0), ?),
    active = CASE WHEN ? >= COALESCE(last_heartbeat, 0) THEN ? ELSE active END,
    processed = MAX(COALESCE(processed, 0), COALESCE(?, 0)),
    loadavg = CASE WHEN ? >= COALESCE(last_heartbeat, 0) THEN ? ELSE loadavg END,
    dropped = MAX(COALESCE(dropped, 0), COALESCE(?, 0)),
    heartbeat_freq = COALESCE(?, heartbeat_freq),
    state = CASE WHEN offline_at IS NULL OR offline_at < ? THEN 'online' ELSE state END
WHERE hostname = ?"""
"""A heartbeat at a time: what it says of the worker, unless a later one said it already."""


def worker_event(conn: sqlite3.Connection, event: ev.Event, now: float) -> None:
    """One online, heartbeat or offline event: the worker's row, its gaps, its definitions."""
    kind = event["kind"]
    hostname = event.get("worker") or event["host"]
    ts = event["ts"]
    if kind != ev.WORKER_OFFLINE:
        record_gap(conn, hostname, ts, online=kind == ev.WORKER_ONLINE, freq=event.get("freq"))
    conn.execute(
        "INSERT INTO workers (hostname, state, last_seen) VALUES (?, 'online', ?)"
        " ON CONFLICT (hostname) DO NOTHING",
        (hostname, ts),
    )
    if kind == ev.WORKER_ONLINE:
        conn.execute(
            """UPDATE workers SET
                state = CASE WHEN offline_at IS NULL OR offline_at < ? THEN 'online'
                             ELSE state END,
                online_at = MAX(COALESCE(online_at, 0), ?),
                last_seen = MAX(last_seen, ?), pool = ?, concurrency = ?, sw_ver = ?,
                queues = ?, heartbeat_freq = ?, pid = ?
            WHERE hostname = ?""",
            (ts, ts, ts, event.get("pool"), event.get("concurrency"), event.get("sw_ver"),
             _json_or_none(event.get("queues")), event.get("freq"), event["pid"], hostname),
        )  # fmt: skip
        _registry(conn, hostname, event.get("tasks") or [], now)
    elif kind == ev.WORKER_HEARTBEAT:
        conn.execute(
            _BEAT,
            (ts, ts, ts, event.get("active"), event.get("processed"),
             ts, _json_or_none(event.get("loadavg")), event.get("dropped"), event.get("freq"),
             ts, hostname),
        )  # fmt: skip
    else:
        conn.execute(
            """UPDATE workers SET
                offline_at = MAX(COALESCE(offline_at, 0), ?),
                last_seen = MAX(last_seen, ?),
                state = CASE WHEN COALESCE(online_at, 0) <= ? THEN 'offline' ELSE state END,
                dropped = MAX(COALESCE(dropped, 0), COALESCE(?, 0))
            WHERE hostname = ?""",
            (ts, ts, ts, event.get("dropped"), hostname),
        )


_GAP = "INSERT INTO worker_gaps (hostname, start, end) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"


def record_gap(
    conn: sqlite3.Connection, hostname: str, ts: float, *, online: bool, freq: Any
) -> None:
    """The gap a heartbeat (or an online event) at ``ts`` ends, if the worker was silent.

    Runs before the event updates the worker's row, against the last beat the
    row knew (its latest heartbeat or online event). Only the worker's own
    events count: its tasks' events come from its pool, which may run while
    the worker itself is stuck (a solo pool busy on a long task sends no
    heartbeat), and an order between the two streams is not to be relied on.
    """
    row = conn.execute(
        "SELECT last_heartbeat, online_at, offline_at, heartbeat_freq FROM workers"
        " WHERE hostname = ?",
        (hostname,),
    ).fetchone()
    if row is None or (row[0] is None and row[1] is None):
        return  # the first beat of a worker: nothing to be silent since
    last_heartbeat, online_at, offline_at, known_freq = row
    last = max(last_heartbeat or 0.0, online_at or 0.0)
    allowed = allowed_silence(freq if number(freq) else known_freq)
    if ts <= last:
        _split(conn, hostname, ts, allowed)
    elif online and offline_at is not None and last < offline_at < ts:
        if offline_at - last > allowed:  # silent before it said goodbye
            conn.execute(_GAP, (hostname, last, offline_at))
        conn.execute(_GAP, (hostname, offline_at, ts))  # away: offline, then back
    elif ts - last > allowed:
        conn.execute(_GAP, (hostname, last, ts))


def _split(conn: sqlite3.Connection, hostname: str, ts: float, allowed: float) -> None:
    """A late event inside a gap already written: the worker was heard at ``ts`` after all."""
    found = conn.execute(
        "SELECT start, end FROM worker_gaps WHERE hostname = ? AND start < ?"
        " ORDER BY start DESC LIMIT 1",
        (hostname, ts),
    ).fetchone()
    if found is None or found[1] <= ts:
        return
    start, end = found
    conn.execute("DELETE FROM worker_gaps WHERE hostname = ? AND start = ?", (hostname, start))
    if ts - start > allowed:
        conn.execute(_GAP, (hostname, start, ts))
    if end - ts > allowed:
        conn.execute(_GAP, (hostname, ts, end))


def prune_gaps(conn: sqlite3.Connection, cutoff: float) -> None:
    """Forget the gaps that ended before ``cutoff`` (the retention's)."""
    conn.execute("DELETE FROM worker_gaps WHERE end < ?", (cutoff,))


def _registry(conn: sqlite3.Connection, hostname: str, tasks: list[Any], now: float) -> None:
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
    conn.executemany(
        """INSERT INTO registry (name, module, signature, queue, max_retries,
            default_retry_delay, autoretry_for, retry_backoff, rate_limit, time_limit,
            soft_time_limit, acks_late, ignore_result, workers, updated_at, retry_policy)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (name) DO UPDATE SET
            module = excluded.module, signature = excluded.signature,
            queue = excluded.queue, max_retries = excluded.max_retries,
            default_retry_delay = excluded.default_retry_delay,
            autoretry_for = excluded.autoretry_for, retry_backoff = excluded.retry_backoff,
            rate_limit = excluded.rate_limit, time_limit = excluded.time_limit,
            soft_time_limit = excluded.soft_time_limit, acks_late = excluded.acks_late,
            ignore_result = excluded.ignore_result, retry_policy = excluded.retry_policy,
            workers = (SELECT json_group_array(value) FROM (
                SELECT DISTINCT value FROM json_each(registry.workers)
                UNION SELECT value FROM json_each(excluded.workers))),
            updated_at = excluded.updated_at""",
        rows,
    )


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _num(value: Any) -> float | int | None:
    """A number; a bool as 0 or 1 (the registry keeps flags as integers)."""
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int | float) else None
