"""What the JSON API and the pages both read: task detail, flows, traces, parameters.

Each raises the domain errors of :mod:`stemtrace.server.errors`
(:class:`NotFound`, :class:`BadParameter`); the API answers them as 404 and
422 JSON (:class:`stemtrace.server.security.SecureRoute`), the pages as their
own 404 page or a message beside the filters.
"""

from __future__ import annotations

import math
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

from stemtrace.core import states
from stemtrace.model import flows, planned, problems, timeline, traces
from stemtrace.server.errors import BadParameter, NotFound
from stemtrace.store import Backend

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(name: str, value: str | None, now: float) -> float | None:
    """Epoch seconds, ISO-8601 (UTC when no zone is given), or an age such as ``15m``."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise BadParameter(f"{name} must be a finite time, not {value!r}")
        return number
    relative = _RELATIVE.match(text.lower())
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(
            f"{name} must be epoch seconds, an ISO-8601 time or an age like 15m, 2h, 7d;"
            f" got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_states(values: list[str] | None) -> tuple[str, ...]:
    found: list[str] = []
    for value in values or ():
        for part in value.split(","):
            state = part.strip().upper()
            if not state:
                continue
            if state not in states.ALL:
                raise BadParameter(
                    f"unknown state {part.strip()!r}; use one of {', '.join(states.ALL)}"
                )
            found.append(state)
    return tuple(dict.fromkeys(found))


def not_found(what: str, value: str) -> NotFound:
    return NotFound(what, value)


FLOW_SLOTS = threading.BoundedSemaphore(2)
"""Flows built at once. A 10,000-task flow holds tens of megabytes while it is
built; requests beyond two wait their turn (the interpreter lock would have
them take turns anyway) instead of each adding that much to the server."""


def load_flow(
    store: Backend,
    task_id: str,
    collapse_over: int,
    expand: list[str] | None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    with FLOW_SLOTS:
        rows = store.flow_rows(task_id)
        if rows is None:
            raise not_found("task or group", task_id)
        mark_lost(store, rows, timeout)
        return flows.build_flow(rows, collapse_over=collapse_over, expand=frozenset(expand or ()))


def mark_lost(store: Backend, rows: list[dict[str, Any]], timeout: float) -> None:
    """Mark the rows started on a worker that is gone (``timeout``: when a silent one is)."""
    if any(row.get("state") == states.STARTED for row in rows):
        problems.mark_lost(rows, store.workers(timeout=timeout, running=False))


def load_trace(
    store: Backend, trace_id: str, timeout: float = 60.0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The trace's task rows, and :func:`stemtrace.model.traces.trace_flows` of them."""
    with FLOW_SLOTS:
        rows = store.trace_rows(trace_id)
        if not rows:
            raise not_found("trace", trace_id)
        mark_lost(store, rows, timeout)
        return rows, traces.trace_flows(trace_id, rows)


def flow_and_path(
    store: Backend, task_id: str, timeout: float = 60.0
) -> tuple[dict[str, Any], set[str]]:
    """A flow as exports draw it, and the ids on its critical path."""
    graph = load_flow(store, task_id, flows.COLLAPSE_OVER, None, timeout)
    return graph, set(flows.critical_path(graph, time.time())["nodes"])


def histories(store: Backend, graph: dict[str, Any], limit: int = 200) -> dict[str, Any]:
    """The event histories of the flow's retried tasks (the first ``limit``).

    Their waterfall rows need each attempt and wait; a task that ran once is
    drawn from its row's times.
    """
    retried = [n["id"] for n in graph["nodes"] if n["kind"] == "task" and n.get("attempts", 0) > 1]
    return {task_id: store.task_events(task_id) for task_id in retried[:limit]}


def planned_detail(store: Backend, task_id: str) -> dict[str, Any]:
    """An id that never ran (a chain link, a chord callback) or a group's id, in its flow.

    ``state`` is ``NOT_RUN`` or ``PLANNED`` (a group's: its members'); ``planned``
    says what the id is and what it waits for or what stopped it.
    """
    try:
        graph = load_flow(store, task_id, flows.COLLAPSE_OVER, None)
    except NotFound:
        raise not_found("task", task_id) from None
    described = planned.describe(graph, task_id)
    if described is None:
        raise not_found("task", task_id)
    graph["critical_path"] = flows.critical_path(graph, time.time())
    return {
        "id": task_id,
        "name": described["name"],
        "state": described["state"],
        "planned": described,
        "events": [],
        "phases": [],
        "durations": {},
        "attempts": [],
        "children": [],
        "flow": graph,
    }


def task_detail(store: Backend, task_id: str) -> dict[str, Any]:
    """Everything about one task, as ``GET /api/tasks/{id}`` returns it.

    For an id stemtrace knows only as planned, see :func:`planned_detail`.
    """
    task = store.get_task(task_id)
    if task is None:
        return planned_detail(store, task_id)
    history = store.task_events(task_id)
    for field in ("args", "kwargs", "result"):  # seen only through Celery's events
        if task[field] is None:
            task[field] = next((e[field] for e in history if e.get(field) is not None), None)
    now = datetime.now(UTC).timestamp()
    found_phases = timeline.phases(history, now=None if task["state"] in states.TERMINAL else now)
    task["events"] = history
    task["phases"] = found_phases
    task["durations"] = timeline.durations(found_phases)
    task["attempts"] = timeline.attempts(history, found_phases)
    task["children"] = store.children(task_id)
    task["exception"] = (
        {"type": task["exc_type"], "message": task["exc_message"]} if task["exc_type"] else None
    )
    return task
