"""What the flows, traces and task-name pages share with their JSON twins.

Parameters are read here once, so a page and its JSON refuse the same input
with the same words (:class:`BadParameter`: 422); the rows are the store's
(:mod:`stemtrace.store.lists` says what each holds), listed newest first with
the executions list's cursors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from stemtrace.server.errors import BadParameter
from stemtrace.server.views import parse_time
from stemtrace.store import FLOW_OUTCOMES, Backend, BadCursor, FlowFilters

Row = dict[str, Any]
HOUR: Final = 3600
ERRORS_SINCE: Final = "24h"
"""The range ``GET /api/errors`` counts over when not told."""


def flow_filters(
    name: str | None, outcome: str | None, since: str | None, until: str | None, now: float
) -> FlowFilters:
    """The flows list's filters from request parameters (blank means not given)."""
    if outcome and outcome not in FLOW_OUTCOMES:
        raise BadParameter(f"outcome must be one of {', '.join(FLOW_OUTCOMES)}, not {outcome!r}")
    return FlowFilters(
        name=name or None,
        outcome=outcome or None,
        since=parse_time("since", since or None, now),
        until=parse_time("until", until or None, now),
    )


def flows(
    store: Backend, filters: FlowFilters, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """A page of workflows and the next page's cursor."""
    try:
        return store.list_flows(filters, cursor or None, limit)
    except BadCursor as exc:
        raise BadParameter(str(exc)) from None


def traces(
    store: Backend,
    since: str | None,
    until: str | None,
    cursor: str | None,
    limit: int,
    now: float,
) -> tuple[list[Row], str | None]:
    """A page of traces and the next page's cursor."""
    start = parse_time("since", since or None, now)
    end = parse_time("until", until or None, now)
    try:
        return store.list_traces(start, end, cursor or None, limit)
    except BadCursor as exc:
        raise BadParameter(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Window:
    since: float
    until: float


def error_window(since: str | None, until: str | None, now: float) -> Window:
    """``[since, until)`` for the error groups: the last 24 hours unless told."""
    start = parse_time("since", since or ERRORS_SINCE, now)
    end = parse_time("until", until or None, now)
    assert start is not None
    end = now if end is None else end
    if end <= start:
        raise BadParameter(f"until must be after since (since {start:.0f}, until {end:.0f})")
    return Window(start, end)


def hour_counts(hours: Sequence[Sequence[int]], window: Window) -> tuple[float, list[int]]:
    """A group's failures per hour as one count per hour of ``window``, and the first hour."""
    first = math.floor(window.since / HOUR) * HOUR
    slots = max(math.ceil((window.until - first) / HOUR), 1)
    counts = [0] * slots
    for t, n in hours:
        index = int((t - first) // HOUR)
        if 0 <= index < slots:
            counts[index] += n
    return first, counts


def latest_traceback(store: Backend, group: Row) -> str | None:
    """The traceback of the group's latest failure, while that task is still stored."""
    task = store.get_task(group["last_task_id"]) if group.get("last_task_id") else None
    return task.get("traceback") if task else None


def registry_entry(store: Backend, name: str) -> Row | None:
    """The registry's entry of ``name`` (defined, or only seen running), or ``None``."""
    return next((entry for entry in store.registry() if entry["name"] == name), None)
