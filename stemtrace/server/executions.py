"""What the executions page and ``GET /api/tasks`` share: their filters, the sort, the columns.

A list sorted by run time or queue wait (``sort=runtime`` or ``sort=wait``)
is always bounded by a window of first-seen times: without ``since`` it is
the last :data:`SORT_WINDOW`, and the page says so. The rows' "so far"
values and ETAs are worked out here from one ``now``, the page's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from stemtrace.core import coerce, states
from stemtrace.server import overview
from stemtrace.server.errors import BadParameter
from stemtrace.server.views import parse_states, parse_time
from stemtrace.store import SORTS, TaskFilters

SORT_WINDOW: Final = next(r for r in overview.RANGES if r.key == "24h")
"""The window of a sorted list given no ``since``."""
SORT_LABELS: Final = {"runtime": "run time", "wait": "queue wait"}
ETA_SHOWN: Final = 80
"""Characters of an ETA that is not a time shown as given (escaped, as all task text)."""


@dataclass(frozen=True, slots=True)
class Listing:
    filters: TaskFilters
    defaulted: bool
    """Whether the window is :data:`SORT_WINDOW` because a sort was asked without ``since``."""


def parse_sort(value: str | None) -> str | None:
    if not value:
        return None
    if value not in SORTS:
        raise BadParameter(
            f"sort must be one of {', '.join(SORTS)} (longest first), not {value[:40]!r}"
        )
    return value


def listing(query: Mapping[str, Any], now: float) -> Listing:
    """The filters of a ``query`` of the list's parameters (absent ones ``None``).

    Raises :class:`BadParameter` for a bad state, time or sort.
    """
    sort = parse_sort(query.get("sort"))
    since = parse_time("since", query.get("since") or None, now)
    until = parse_time("until", query.get("until") or None, now)
    defaulted = sort is not None and since is None
    if defaulted:
        since = (now if until is None else until) - SORT_WINDOW.seconds
    text = {
        name: query.get(name) or None for name in ("name", "worker", "trace_id", "root_id", "queue")
    }
    filters = TaskFilters(
        states=parse_states(query.get("state")),
        q=query.get("q") or None,
        since=since,
        until=until,
        sort=sort,
        **text,
    )
    return Listing(filters, defaulted)


def window(found: Listing) -> dict[str, Any] | None:
    """The window a sorted list covers (``None`` when not sorted), for the API's answer."""
    filters = found.filters
    if filters.sort is None:
        return None
    return {"since": filters.since, "until": filters.until, "defaulted": found.defaulted}


def paced(rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """``rows`` with what the page shows of each besides its fields, as of ``now``.

    ``wait_so_far``: a task sent and not started, how long it has waited;
    ``run_so_far``: a running task, how long it has run; ``eta``: its ETA as
    :func:`eta_of` shows it.
    """
    found = []
    for row in rows:
        sent, started, state = row.get("sent_at"), row.get("started_at"), row.get("state")
        waiting = started is None and sent is not None and state in states.WAITING
        running = row.get("runtime") is None and started is not None and state == states.STARTED
        found.append({
            **row,
            "wait_so_far": max(now - sent, 0.0) if waiting and sent is not None else None,
            "run_so_far": max(now - started, 0.0) if running and started is not None else None,
            "eta_shown": eta_of(row, now),
        })  # fmt: skip
    return found


def eta_of(row: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """``{"at", "text", "due"}``: the ETA as a time (``at``, else ``None`` and ``text`` as given)
    and, for a task not started yet (or waiting for its next attempt), seconds until it
    is due (negative: overdue by); ``None`` without an ETA."""
    eta = row.get("eta")
    if eta is None or eta == "":
        return None
    at = coerce.moment(eta)
    text = str(eta)
    if len(text) > ETA_SHOWN:
        text = text[:ETA_SHOWN] + "…"
    pending = row.get("state") == states.RETRY or (
        row.get("started_at") is None and row.get("state") in states.WAITING
    )
    due = at - now if at is not None and pending else None
    return {"at": at, "text": text, "due": due}


def sort_links(
    url: Callable[..., str], form: Mapping[str, Any], limit: int
) -> dict[str, dict[str, str | None]]:
    """Per sortable column (``seen``, ``wait``, ``runtime``): the link that sorts by it,
    keeping the other filters, and its ``aria-sort`` (``None``: not the sort now)."""
    current = form.get("sort") or None
    found: dict[str, dict[str, str | None]] = {}
    for column, sort in (("seen", None), ("wait", "wait"), ("runtime", "runtime")):
        query = {**form, "sort": sort, "limit": limit}
        found[column] = {
            "href": url("stemtrace.executions", query=query),
            "aria": "descending" if sort == current else None,
        }
    return found


def window_links(
    url: Callable[..., str], form: Mapping[str, Any], limit: int
) -> list[dict[str, Any]]:
    """The overview's ranges as ``since`` links, keeping the other filters."""
    return [
        {
            "label": r.label,
            "href": url("stemtrace.executions", query={**form, "since": r.key, "until": None,
                                                       "limit": limit}),
            "current": form.get("since") == r.key and not form.get("until"),
        }
        for r in overview.RANGES
    ]  # fmt: skip
