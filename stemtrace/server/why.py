"""Why a task is where it is: the task page's answer, and its API's ``why``.

Its queue (how many messages the broker holds now, how many tasks were sent
there before it and not received, who consumes it), its ETA, whether its
worker is gone, its problems, and its queue wait and run time beside its
name's usual of the last day. Its problems are found
by the same rules as ``/problems`` (:meth:`stemtrace.server.watch.Watch.of_task`), for
this one task: a task page never waits for every task in flight to be looked at.
"""

from __future__ import annotations

from typing import Any

from stemtrace.core import states
from stemtrace.core.coerce import moment
from stemtrace.model import problems
from stemtrace.server.watch import Watch
from stemtrace.store import Backend


def why(watch: Watch, store: Backend, task: dict[str, Any], now: float) -> dict[str, Any]:
    """``problems``, ``due``, ``queue``, ``lost`` and ``usual`` of one task (``None``
    where they do not apply)."""
    state = task["state"]
    found_why: dict[str, Any] = {
        "problems": [],
        "due": None,
        "queue": None,
        "lost": None,
        "usual": _usual(watch, task, now),
    }
    if state in states.TERMINAL:  # a finished task needs no worker's state: none is read
        return found_why
    workers = watch.workers_now(now)
    found_why["problems"] = watch.of_task(task, workers, now)
    eta = moment(task.get("eta"))
    if eta is not None and state != states.STARTED:
        found_why["due"] = {"at": eta, "in": round(eta - now, 3)}
    queue, sent_at = task.get("queue"), task.get("sent_at")
    if state == states.PENDING and queue:
        depth = store.queue_depths().get(queue) or {}
        online = [w for w in workers if w.get("state") == "online"]
        found_why["queue"] = {
            "name": queue,
            "broker_messages": depth.get("messages"),
            "broker_consumers": depth.get("consumers"),
            "broker_at": depth.get("at"),
            "ahead": store.ahead_of(queue, sent_at) if isinstance(sent_at, float) else None,
            "consumers": sorted(w["hostname"] for w in online if queue in w.get("queues", [])),
            "consumers_known": all(w.get("queues") for w in online),
        }
    if state == states.STARTED:
        worker = next((w for w in workers if w["hostname"] == task.get("worker")), None)
        gone = problems.worker_gone(worker, task.get("started_at"))
        if gone is not None:
            found_why["lost"] = {"worker": task.get("worker"), "reason": gone}
    return found_why


def _usual(watch: Watch, task: dict[str, Any], now: float) -> dict[str, Any] | None:
    """This task's queue wait and run time (so far, while it goes) beside its name's usual."""
    usual = watch.usual(task.get("name"))
    if usual is None:
        return None
    sent, started = task.get("sent_at"), task.get("started_at")
    finished = task.get("finished_at")
    wait = run = None
    wait_so_far = run_so_far = False
    if isinstance(sent, float):
        if isinstance(started, float):
            wait = max(started - sent, 0.0)
        elif task["state"] in (states.PENDING, states.RECEIVED):
            wait, wait_so_far = max(now - sent, 0.0), True
    if isinstance(task.get("runtime"), float):
        run = task["runtime"]
    elif isinstance(started, float):
        if isinstance(finished, float):
            run = max(finished - started, 0.0)
        elif task["state"] == states.STARTED:
            run, run_so_far = max(now - started, 0.0), True
    return {**usual, "wait": wait, "wait_so_far": wait_so_far, "run": run,
            "run_so_far": run_so_far}  # fmt: skip
