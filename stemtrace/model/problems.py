"""What is stuck, late or lost right now: problems found in the tasks still in flight.

Pure: the store hands over the tasks not finished yet (a few thousand at most,
read through the ``tasks_inflight`` index), the workers, the broker's queue
depths and the usual numbers from the rollups; :func:`find` says, for each
task (or queue, or task name) that looks wrong, why in words and since when.
Nothing is stored: a problem clears by itself once its task moves on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from stemtrace.core import states
from stemtrace.core.coerce import moment
from stemtrace.core.thresholds import Thresholds

KINDS: Final = ("lost", "unconsumed", "late", "overdue", "waiting", "held", "retrying")
"""Every kind of problem, the most urgent first (the order the page lists them in)."""
TITLES: Final = {
    "lost": "lost with its worker",
    "unconsumed": "nobody consumes its queue",
    "late": "running late",
    "overdue": "overdue",
    "waiting": "waiting too long in a queue",
    "held": "held by a worker but not started",
    "retrying": "retrying over and over",
}
MIN_USUAL: Final = 20
"""Finished runs (or waits) a name (or queue) needs in the last day before its usual counts."""
MIN_FAILURES: Final = 5
"""Failures in the window before a name's failure rate can be called far above its usual."""


@dataclass(frozen=True)
class Usuals:
    """What the rollups say is normal, over the last day."""

    wait_p95: Mapping[str, float] = field(default_factory=dict)
    """Per queue: the p95 queue wait, seconds (queues with enough waits only)."""
    run_p50: Mapping[str, float] = field(default_factory=dict)
    run_p95: Mapping[str, float] = field(default_factory=dict)
    run_p99: Mapping[str, float] = field(default_factory=dict)
    """Per task name: run time percentiles, seconds (names with enough runs only)."""
    failures: Mapping[str, tuple[int, int, int, int]] = field(default_factory=dict)
    """Per task name: failed and finished in the window, then over the day before it."""
    limits: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Per task name: its soft and hard time limits, as the registry has them."""


def problem(kind: str, since: float | None, reason: str, **about: Any) -> dict[str, Any]:
    """One problem: its ``kind``, ``since`` when, a ``reason`` in words, and what it is about
    (``task_id``, ``name``, ``queue``, ``worker``: whichever apply)."""
    found = {"kind": kind, "title": TITLES[kind], "since": since, "reason": reason}
    found.update({"task_id": None, "name": None, "queue": None, "worker": None})
    found.update(about)
    return found


def worker_gone(worker: Mapping[str, Any] | None, started_at: float | None) -> str | None:
    """Why a task started on ``worker`` at ``started_at`` can no longer finish, or ``None``.

    The worker said it stopped, went silent (state ``lost``), or came back
    online after the task started: its run died with the old process.
    """
    if worker is None:
        return None
    state = worker.get("state")
    if state == "offline":
        return f"its worker {worker['hostname']} went offline"
    if state == "lost":
        return f"its worker {worker['hostname']} stopped sending heartbeats"
    online_at = worker.get("online_at")
    if started_at is not None and isinstance(online_at, int | float) and online_at > started_at:
        return f"its worker {worker['hostname']} restarted after it started"
    return None


def mark_lost(rows: Iterable[dict[str, Any]], workers: Sequence[Mapping[str, Any]]) -> None:
    """Give each started row whose worker is gone a ``lost`` reason (a derived mark: its
    state stays ``STARTED``, as Celery last said)."""
    by_host = {w["hostname"]: w for w in workers}
    for row in rows:
        if row.get("state") == states.STARTED:
            gone = worker_gone(by_host.get(row.get("worker") or ""), row.get("started_at"))
            if gone is not None:
                row["lost"] = gone


def _gone_since(worker: Mapping[str, Any]) -> float | None:
    for key in ("offline_at", "last_seen"):
        value = worker.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def find(
    tasks: Iterable[Mapping[str, Any]],
    workers: Sequence[Mapping[str, Any]],
    depths: Mapping[str, Mapping[str, Any]],
    usuals: Usuals,
    thresholds: Thresholds,
    now: float,
) -> list[dict[str, Any]]:
    """Every problem among ``tasks`` (in flight), their queues and names, most urgent first."""
    by_host = {w["hostname"]: w for w in workers}
    running: dict[str, list[str]] = defaultdict(list)
    tasks = list(tasks)
    for task in tasks:
        if task["state"] == states.STARTED and task.get("worker"):
            running[task["worker"]].append(task.get("name") or "?")
    found: list[dict[str, Any]] = []
    waiting_in: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for task in tasks:
        found.extend(_task_problems(task, by_host, running, usuals, thresholds, now))
        if task["state"] == states.PENDING and task.get("queue"):
            waiting_in[task["queue"]].append(task)
    found.extend(_queue_problems(waiting_in, workers, depths, now))
    found.extend(_failing_names(usuals, thresholds, now))
    order = {kind: n for n, kind in enumerate(KINDS)}
    found.sort(key=lambda p: (order[p["kind"]], p["since"] if p["since"] is not None else now))
    return found


def of_task(
    task: Mapping[str, Any],
    workers: Sequence[Mapping[str, Any]],
    usuals: Usuals,
    thresholds: Thresholds,
    now: float,
) -> list[dict[str, Any]]:
    """One task's problems, as :func:`find` finds them (``workers`` with what each runs:
    their ``running`` lists, as the store's workers read gives them)."""
    by_host = {w["hostname"]: w for w in workers}
    running = {w["hostname"]: [r.get("name") or "?" for r in w.get("running") or []]
               for w in workers}  # fmt: skip
    row = {column: task.get(column) for column in _COLUMNS}
    return _task_problems(row, by_host, running, usuals, thresholds, now)


_COLUMNS = ("id", "name", "state", "queue", "worker", "retries", "eta", "sent_at",
            "received_at", "started_at", "state_ts")  # fmt: skip
"""What a task's problems are found from (the in-flight index holds them)."""


def _task_problems(
    task: Mapping[str, Any],
    by_host: Mapping[str, Mapping[str, Any]],
    running: Mapping[str, list[str]],
    usuals: Usuals,
    limits: Thresholds,
    now: float,
) -> list[dict[str, Any]]:
    """The problems of one task in flight (this runs for every one: kept lean)."""
    found = []
    state = task["state"]
    eta = moment(task["eta"]) if task["eta"] is not None else None
    due = eta is not None and eta > now
    if state == states.STARTED:
        started = task["started_at"]
        gone = worker_gone(by_host.get(task["worker"] or ""), started)
        if gone is not None:
            since = _gone_since(by_host[task["worker"]])
            found.append(_of(task, "lost", since, f"started and never finished: {gone}"))
        elif started is not None:
            late = _late(task, now - started, usuals, limits)
            if late is not None:
                found.append(_of(task, "late", started, late))
    elif eta is not None and not due and now - eta > limits.overdue_seconds:
        found.append(_of(task, "overdue", eta, f"due {_ago(now - eta)} ago and not started"))
    elif state == states.PENDING and not due:
        since = max(task["sent_at"] or now, eta or 0.0)
        waited = now - since
        if waited > limits.wait_seconds:
            usual = usuals.wait_p95.get(task["queue"] or "")
            if not usual or waited > limits.wait_factor * usual:
                told = f"; its usual wait (p95) is {_ago(usual)}" if usual else ""
                queue = task["queue"] or "its queue"
                reason = f"waiting in {queue} for {_ago(waited)}{told}"
                found.append(_of(task, "waiting", since, reason))
    elif state == states.RECEIVED and not due:
        since = max(task["received_at"] or now, eta or 0.0)
        if now - since > limits.held_seconds:
            found.append(_of(task, "held", since, _held(task, now - since, by_host, running)))
    retries = task["retries"] or 0
    if retries > limits.retries:
        found.append(_of(task, "retrying", task["state_ts"], f"retried {retries} times so far"))
    return found


def _of(task: Mapping[str, Any], kind: str, since: float | None, reason: str) -> dict[str, Any]:
    """A problem of one task (:func:`problem`, without its keyword arguments' cost)."""
    return {"kind": kind, "title": TITLES[kind], "since": since, "reason": reason,
            "task_id": task["id"], "name": task["name"], "queue": task["queue"],
            "worker": task["worker"]}  # fmt: skip


def _late(task: Mapping[str, Any], ran: float, usuals: Usuals, limits: Thresholds) -> str | None:
    name = task.get("name") or ""
    soft, hard = usuals.limits.get(name, (None, None))
    if hard and ran > hard:
        return f"running {_ago(ran)}, past its hard time limit of {_ago(hard)}"
    if soft and ran > soft:
        return f"running {_ago(ran)}, past its soft time limit of {_ago(soft)}"
    usual = usuals.run_p99.get(name)
    if usual and ran > max(limits.late_seconds, limits.late_factor * usual):
        return f"running {_ago(ran)}; its usual run time (p99) is {_ago(usual)}"
    return None


def _held(
    task: Mapping[str, Any],
    held: float,
    by_host: Mapping[str, Mapping[str, Any]],
    running: Mapping[str, list[str]],
) -> str:
    host = task.get("worker") or "a worker"
    text = f"received by {host} {_ago(held)} ago and not started"
    gone = worker_gone(by_host.get(host), None)
    if gone is not None:
        return f"{text}; {gone}, so the broker hands it to another worker"
    busy = running.get(host)
    if busy:
        names = ", ".join(sorted(set(busy))[:3])
        return f"{text}: the worker is busy running {_n(len(busy), 'task')} ({names})"
    return text


def _queue_problems(
    waiting_in: Mapping[str, list[Mapping[str, Any]]],
    workers: Sequence[Mapping[str, Any]],
    depths: Mapping[str, Mapping[str, Any]],
    now: float,
) -> Iterable[dict[str, Any]]:
    online = [w for w in workers if w.get("state") == "online"]
    if any(not w.get("queues") for w in online):
        return  # a worker that did not say what it consumes may consume anything
    consumed = {q for w in online for q in w["queues"]}
    for queue in sorted(set(waiting_in) | set(depths)):
        if queue in consumed:
            continue
        depth = depths.get(queue, {})
        messages = depth.get("messages")
        if depth.get("consumers"):
            continue  # the broker sees a consumer stemtrace does not know of
        tasks = waiting_in.get(queue, [])
        if not tasks and not messages:
            continue
        oldest = min((t.get("sent_at") or now for t in tasks), default=None)
        parts = []
        if messages:
            parts.append(f"{_n(messages, 'message')} in the broker")
        if tasks:
            parts.append(f"{_n(len(tasks), 'task')} sent and not received")
        who = "no worker is online" if not online else "no online worker consumes it"
        yield problem("unconsumed", oldest, f"queue {queue}: {', '.join(parts)}; {who}",
                      queue=queue, waiting=len(tasks), messages=messages)  # fmt: skip


def _failing_names(usuals: Usuals, limits: Thresholds, now: float) -> Iterable[dict[str, Any]]:
    window = limits.failure_window
    for name, (failed, done, day_failed, day_done) in sorted(usuals.failures.items()):
        if failed < MIN_FAILURES or not done or day_done < MIN_USUAL:
            continue
        rate, usual = failed / done, day_failed / day_done
        if rate >= 0.1 and rate > limits.failure_factor * usual:
            yield problem(
                "retrying",
                now - window,
                f"{name} failed {failed} of {done} tasks ({rate:.0%}) in the last"
                f" {_ago(window)}; over the day before, {usual:.0%}",
                name=name,
            )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _ago(seconds: float | None) -> str:
    """A duration in words short enough for a reason: ``42 s``, ``3 min``, ``2.5 h``."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
