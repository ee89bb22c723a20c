"""The fleet: task definitions with what ran of them (the registry), and the workers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from stemtrace.core import buckets, states
from stemtrace.store import rollups
from stemtrace.store.dbapi import Executes
from stemtrace.store.queries import load_json


def _retry_policy(definition: dict[str, Any]) -> dict[str, Any]:
    """The policy the worker described; rows written before migration 9 have the columns only."""
    stored = load_json(definition.get("retry_policy"))
    if isinstance(stored, dict):
        return stored
    return {
        "max_retries": definition.get("max_retries"),
        "countdown": definition.get("default_retry_delay"),
        "backoff": None,
        "backoff_max": None,
        "jitter": None,
        "autoretry_for": load_json(definition.get("autoretry_for")) or [],
        "dont_autoretry_for": [],
    }


def registry(conn: Executes) -> list[dict[str, Any]]:
    """Task definitions (announced by workers or seen in executions) with their numbers.

    The numbers come from the rollups the writer keeps (:mod:`stemtrace.store.rollups`),
    not from a scan: counts and rates cover every stored task; p50/p95 run
    time every stored finished run, read from the histogram (within a
    bucket's width, 41 %).
    """
    defined = {
        row["name"]: dict(row) for row in _dict_rows(conn, "SELECT * FROM registry ORDER BY name")
    }
    numbers = rollups.name_numbers(conn)
    found = []
    for name in sorted(set(defined) | set(numbers)):
        entry: dict[str, Any] = {"name": name, "defined": name in defined}
        definition = defined.get(name, {})
        for key in ("module", "signature", "queue", "max_retries", "default_retry_delay",
                    "retry_backoff", "rate_limit", "time_limit", "soft_time_limit"):  # fmt: skip
            entry[key] = definition.get(key)
        for key in ("acks_late", "ignore_result"):
            value = definition.get(key)
            entry[key] = None if value is None else bool(value)
        entry["autoretry_for"] = load_json(definition.get("autoretry_for")) or []
        entry["retry_policy"] = _retry_policy(definition) if definition else None
        entry["workers"] = load_json(definition.get("workers")) or []
        entry.update(_numbers(numbers.get(name)))
        found.append(entry)
    return found


def _numbers(numbers: dict[str, Any] | None) -> dict[str, Any]:
    by_state: dict[str, int] = numbers["states"] if numbers else {}
    total = sum(by_state.values())
    counts = {
        "total": total,
        "succeeded": by_state.get(states.SUCCESS, 0),
        "failed": by_state.get(states.FAILURE, 0),
        "revoked": by_state.get(states.REVOKED, 0) + by_state.get(states.REJECTED, 0),
        "active": sum(n for state, n in by_state.items() if state not in states.TERMINAL),
        "retried": int(numbers["retried"]) if numbers else 0,
    }
    run = numbers["run"] if numbers else []
    return {
        "counts": counts,
        "failure_rate": _rate(counts["failed"], total),
        "retry_rate": _rate(counts["retried"], total),
        "last_seen": numbers["last_seen"] if numbers else None,
        "runtime_p50": buckets.percentile(run, 0.50) if run else None,
        "runtime_p95": buckets.percentile(run, 0.95) if run else None,
    }


def percentile(values: Iterable[float], fraction: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(round(fraction * (len(ordered) - 1)), len(ordered) - 1)
    return float(ordered[index])


def _rate(part: Any, total: int) -> float | None:
    return round(int(part or 0) / total, 4) if total else None


def _dict_rows(conn: Executes, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def workers(
    conn: Executes,
    now: float | None = None,
    timeout: float = 60.0,
    hostname: str | None = None,
    *,
    at_once: bool = False,
    running: bool = True,
) -> list[dict[str, Any]]:
    """Every worker (or the one named ``hostname``); one not heard from for three
    heartbeats (or ``timeout`` s, whichever is longer) counts as ``lost``. ``at_once``:
    what they run read in one statement (:func:`_running`); ``running=False``: not read."""
    now = time.time() if now is None else now
    found = []
    sql, params = "SELECT * FROM workers ORDER BY hostname", []
    if hostname is not None:
        sql, params = "SELECT * FROM workers WHERE hostname = ?", [hostname]
    rows = _dict_rows(conn, sql, params)
    started = _running(conn, [row["hostname"] for row in rows], at_once) if running else {}
    for row in rows:
        silence = max(3 * float(row["heartbeat_freq"] or 20.0), timeout)
        state = row["state"]
        if state == "online" and now - row["last_seen"] > silence:
            state = "lost"
        row["state"] = state
        queues = load_json(row["queues"])
        queues = queues if isinstance(queues, list) else []
        row["queues"] = [q for q in queues if isinstance(q, str)]
        loadavg = load_json(row["loadavg"])
        row["loadavg"] = (
            [x for x in loadavg if isinstance(x, int | float)] if isinstance(loadavg, list) else []
        )
        row["running"] = started.get(row["hostname"], [])
        found.append(row)
    return found


RUNNING_LISTED = 100
"""A worker's started tasks listed at most (the newest)."""
_RUNNING_OF = (
    "SELECT worker, id, name, started_at FROM tasks INDEXED BY tasks_running"
    f" WHERE worker = ? AND state = 'STARTED' ORDER BY seen_at DESC LIMIT {RUNNING_LISTED}"
)
_RUNNING_ALL = (
    "SELECT worker, id, name, started_at FROM (SELECT worker, id, name, started_at,"
    " row_number() OVER (PARTITION BY worker ORDER BY seen_at DESC) AS n"
    " FROM tasks INDEXED BY tasks_running WHERE state = 'STARTED') AS r"
    f" WHERE n <= {RUNNING_LISTED} ORDER BY worker, n"
)


def _running(
    conn: Executes, hostnames: list[str], at_once: bool
) -> dict[str, list[dict[str, Any]]]:
    """Each worker's started tasks, newest first: a look-up in ``tasks_running`` per worker,
    or with ``at_once`` one statement over every started task (PostgreSQL's: there each
    look-up is a round trip and a plan over every day's partition, and a task page reads
    every worker; 54 look-ups took 100 ms on a million tasks, the one statement 30)."""
    found: dict[str, list[dict[str, Any]]] = {}
    if at_once and len(hostnames) > 1:
        rows = conn.execute(_RUNNING_ALL)
    else:
        rows = (row for host in hostnames for row in conn.execute(_RUNNING_OF, (host,)))
    for worker, task_id, name, started_at in rows:
        found.setdefault(worker, []).append({"id": task_id, "name": name, "started_at": started_at})
    return found
