"""One task's story from its events: phases with the time spent in each, and attempts.

Pure functions over the event history (dicts with at least ``kind`` and ``ts``).
Events from different hosts can disagree on the clock; a phase never lasts
less than zero.

:func:`phases` is the one definition of a phase: the task page's timeline,
its attempts (``ran``), the API's ``durations`` and the flow's waterfall all
read their times from it. An attempt runs from its ``started`` event to the
event that ends it (``retry``, ``failed``, ``succeeded``, ``revoked``): Celery
re-sends a retried task's message from inside the attempt, before the
``retry`` event, and that ``sent`` (and the worker's early ``received`` of an
ETA message) does not end the run.
"""

from __future__ import annotations

from typing import Any

from stemtrace.core import events as ev
from stemtrace.core import states
from stemtrace.core.bounds import finite

OUTCOME_WORDS = {
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.REVOKED: "revoked",
    states.REJECTED: "rejected",
}
"""The last phase's word: how the task ended."""
PHASE_NAMES = {
    states.PENDING: "queued",
    states.RECEIVED: "waiting in worker",
    states.STARTED: "running",
    states.RETRY: "waiting for retry",
}


def phases(events: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Consecutive phases ``{state, phase, start, end, duration}`` in time order.

    The last phase of an unfinished task runs until ``now`` (``end`` is then
    ``None`` and ``duration`` is measured to ``now`` when given).
    """
    found: list[dict[str, Any]] = []
    retried = _retried_attempts(events)
    for event in events:
        if event.get("kind") not in states.KIND_STATE:
            continue
        if found and found[-1]["state"] == states.STARTED and _resent(event, retried):
            continue  # the next attempt's message, sent while this one still runs
        raw = event.get("ts")
        if not finite(raw):
            continue  # a time the store could not hold (stored as null): no place in time
        ts = float(raw)
        state, _, _ = states.state_key(event["kind"], event.get("retries"))
        if found and found[-1]["state"] == state:
            continue
        if found:
            _close(found[-1], ts)
        if state in states.TERMINAL:
            found.append(
                {"state": state, "phase": "finished", "start": ts, "end": ts, "duration": 0.0,
                 "outcome": OUTCOME_WORDS[state], "reason": ending(event, found)}
            )  # fmt: skip
            break
        found.append(
            {
                "state": state,
                "phase": PHASE_NAMES[state],
                "start": ts,
                "end": None,
                "duration": None,
            }
        )
    if found and found[-1]["end"] is None and now is not None:
        found[-1]["duration"] = round(max(now - found[-1]["start"], 0.0), 6)
    return found


def ending(event: dict[str, Any], before: list[dict[str, Any]]) -> str | None:
    """Why a task was revoked or rejected, in words (``None`` for other endings).

    ``before``: the phases up to it (whether it ever ran).
    """
    kind = event.get("kind")
    if kind == ev.REJECTED:
        reason = event.get("reason")
        return reason if isinstance(reason, str) and reason else "rejected by its worker"
    if kind != ev.REVOKED:
        return None
    if event.get("expired") is True:
        return "expired before it ran"
    if event.get("terminated") is True:
        signum = event.get("signum")
        return f"terminated (signal {signum})" if type(signum) is int else "terminated"
    if not any(p["state"] == states.STARTED for p in before):
        return "revoked before it ran"
    return "revoked"


def _retried_attempts(events: list[dict[str, Any]]) -> set[int]:
    """The ``retries`` values of the attempts that ended in a ``retry`` event."""
    return {
        retries
        for e in events
        if e.get("kind") == ev.RETRY and isinstance(retries := e.get("retries"), int)
    }


def _resent(event: dict[str, Any], retried: set[int]) -> bool:
    """A retry's re-sent (or early received) message, for an attempt that has its ``retry``."""
    retries = event.get("retries")
    return (
        event.get("kind") in (ev.SENT, ev.RECEIVED)
        and isinstance(retries, int)
        and retries > 0
        and retries - 1 in retried
    )


def _close(phase: dict[str, Any], end: float) -> None:
    phase["end"] = end
    phase["duration"] = round(max(end - phase["start"], 0.0), 6)


def durations(found_phases: list[dict[str, Any]]) -> dict[str, float]:
    """Total seconds per phase name (``queued``, ``waiting in worker``, ``running``, ...)."""
    totals: dict[str, float] = {}
    for phase in found_phases:
        if phase["phase"] != "finished" and phase["duration"] is not None:
            totals[phase["phase"]] = round(totals.get(phase["phase"], 0.0) + phase["duration"], 6)
    return totals


def attempts(
    events: list[dict[str, Any]], found_phases: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per run of the task body: when, where, how it ended, and how long it ran.

    ``ran`` is the time of the ``running`` phases of ``found_phases`` (the
    task's :func:`phases`) within the attempt: the timeline's own number.
    ``runtime`` is what the worker measured, as reported.
    """
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
        if not finite(event.get("ts")):
            continue  # as in phases(): no place in time
        kind = event.get("kind")
        if kind == ev.STARTED:
            current = {
                "number": len(found) + 1,
                "worker": event.get("worker"),
                "started_at": event["ts"],
                "ended_at": None,
                "state": states.STARTED,
                "runtime": None,
                "exc_type": None,
                "exc_message": None,
                "traceback": None,
                "retry_at": None,
            }
            found.append(current)
        elif kind in (ev.RETRY, ev.FAILED, ev.SUCCEEDED) and current is not None:
            current["ended_at"] = event["ts"]
            current["state"] = states.KIND_STATE[kind]
            current["runtime"] = event.get("runtime")
            if kind != ev.SUCCEEDED:
                current["exc_type"] = event.get("exc_type")
                current["exc_message"] = event.get("exc_message")
                current["traceback"] = event.get("traceback")
            if kind == ev.RETRY:
                current["retry_at"] = event.get("retry_at")
            current = None
        elif kind == ev.REVOKED and current is not None:
            current["ended_at"] = event["ts"]
            current["state"] = states.REVOKED
            current = None
    for attempt in found:
        attempt["ran"] = _running_within(found_phases, attempt["started_at"], attempt["ended_at"])
    return found


def _running_within(
    found_phases: list[dict[str, Any]], start: float, end: float | None
) -> float | None:
    spans = [
        p["duration"]
        for p in found_phases
        if p["state"] == states.STARTED
        and p["duration"] is not None
        and p["start"] >= start
        and (end is None or p["start"] <= end)
    ]
    return round(sum(spans), 6) if spans else None


WATERFALL_PHASES = {
    states.PENDING: "queued",
    states.RECEIVED: "waiting",
    states.STARTED: "running",
    states.RETRY: "retry",
}
"""The waterfall's short name of each phase (its CSS class)."""

_ENDED_BY = {state: kind for kind, state in states.KIND_STATE.items() if state in states.TERMINAL}


def row_events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The transitions a task row's times record, as events :func:`phases` reads.

    For a task that ran once, these are its events' times; a retried task's
    phases need its history.
    """
    found = [
        {"kind": kind, "ts": row[column]}
        for kind, column in (
            (ev.SENT, "sent_at"),
            (ev.RECEIVED, "received_at"),
            (ev.STARTED, "started_at"),
        )
        if row.get(column) is not None
    ]
    ended = _ENDED_BY.get(row.get("state") or "")
    if ended is not None and row.get("finished_at") is not None:
        found.append({"kind": ended, "ts": row["finished_at"]})
    return found
