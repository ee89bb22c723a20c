"""One task's story from its events: phases with the time spent in each, and attempts.

Pure functions over the event history (dicts with at least ``kind`` and ``ts``).
Events from different hosts can disagree on the clock; a phase never lasts
less than zero.
"""

from __future__ import annotations

from typing import Any

from stemtrace import events as ev
from stemtrace import states

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
    for event in events:
        if event.get("kind") not in states.KIND_STATE:
            continue
        state, _, _ = states.state_key(event["kind"], event.get("retries"))
        ts = float(event["ts"])
        if found and found[-1]["state"] == state:
            continue
        if found:
            _close(found[-1], ts)
        if state in states.TERMINAL:
            found.append(
                {"state": state, "phase": "finished", "start": ts, "end": ts, "duration": 0.0}
            )
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


def attempts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per run of the task body: when, where, and how it ended."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
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
    return found
