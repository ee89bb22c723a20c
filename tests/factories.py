"""What the tests build: events as capture makes them, tasks, canvases, scenarios with known ids."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from starlette.testclient import TestClient

from stemtrace.core.events import Event, validate_event

WEB = "web-1"


W1 = "celery@worker-1"


W2 = "celery@worker-2"


WEB_PID, MAIN_PID, POOL_PID = 100, 200, 201


Api = Callable[..., TestClient]


T0 = 1_732_900_000.0
"""When events happen in tests that need no particular clock."""


def unchecked(kind: Any, ts: Any, host: Any, pid: Any, **fields: Any) -> dict[str, Any]:
    """An event made of whatever it is given, not validated: what a hostile producer
    or an older version may have sent or stored (a NaN time, a 1000-deep value)."""
    return {"kind": kind, "eid": uuid.uuid4().hex, "ts": ts, "host": host, "pid": pid, **fields}


def event(kind: str, ts: float, host: str, pid: int, **fields: Any) -> Event:
    found = unchecked(kind, ts, host, pid, **fields)
    problem = validate_event(found)
    assert problem is None, f"test built an invalid event: {problem}: {found}"
    return found


def task_event(
    kind: str,
    task_id: str,
    ts: float = T0,
    *,
    host: str = W1,
    pid: int = POOL_PID,
    name: str | None = None,
    **fields: Any,
) -> Event:
    """An event of ``task_id``, where which process sent it does not matter."""
    return event(kind, ts, host, pid, task_id=task_id, name=name, **fields)


def started(n: int, ts: float = T0, **fields: Any) -> Event:
    """The ``n``-th of a run of distinct tasks seen starting: task ``task-{n:04}``,
    eid ``e{n}``, at ``ts + n``."""
    extra = {"eid": f"e{n}", "name": "proj.add", "retries": 0, **fields}
    return task_event("started", f"task-{n:04}", ts + n, **extra)


def json_text(found: dict[str, Any], **raw: str) -> str:
    """``found`` as JSON text, with the fields in ``raw`` written as given: what
    ``json.dumps`` would not write (``NaN``, ``1e400``, arrays nested 1000 deep)."""
    texts = {**{name: json.dumps(value) for name, value in found.items()}, **raw}
    return "{" + ", ".join(f"{json.dumps(name)}: {text}" for name, text in texts.items()) + "}"


def examples(full: int) -> int:
    """A Hypothesis test's ``max_examples``: ``full`` in the full run, in proportion
    fewer under the quicker profile of ``-m unit`` (tests/conftest.py)."""
    return max(
        1, full * settings.default.max_examples // settings.get_profile("default").max_examples
    )


def link(task_id: str, name: str) -> dict[str, str]:
    return {"id": task_id, "name": name}


SENT_DEFAULTS: dict[str, Any] = {
    "group_index": None,
    "chain": [],
    "retries": 0,
    "eta": None,
    "expires": None,
    "queue": "celery",
    "exchange": "",
    "routing_key": "celery",
    "args": [],
    "kwargs": {},
}


@dataclass
class Task:
    """Makes the events of one task id, each with the fields its signal handler sets."""

    id: str
    name: str
    parent_id: str | None = None
    root_id: str | None = None
    trace_id: str | None = None
    group_id: str | None = None

    def context(self) -> dict[str, Any]:
        root_id = self.root_id or self.id
        return {
            "trace_id": self.trace_id or root_id,
            "parent_id": self.parent_id,
            "root_id": root_id,
            "group_id": self.group_id,
        }

    def make(self, kind: str, ts: float, host: str, pid: int, **fields: Any) -> Event:
        return event(kind, ts, host, pid, task_id=self.id, name=self.name, **fields)

    def sent(self, ts: float, host: str = WEB, **fields: Any) -> Event:
        pid = WEB_PID if host == WEB else POOL_PID
        return self.make("sent", ts, host, pid, **{**self.context(), **SENT_DEFAULTS, **fields})

    def received(self, ts: float, worker: str, **fields: Any) -> Event:
        extra = {"retries": 0, "eta": None, "instrumented": True, **fields}
        return self.make("received", ts, worker, MAIN_PID, worker=worker, **self.context(), **extra)

    def started(self, ts: float, worker: str, **fields: Any) -> Event:
        extra = {"retries": 0, **fields}
        return self.make("started", ts, worker, POOL_PID, worker=worker, **self.context(), **extra)

    def ended(self, kind: str, ts: float, worker: str, **fields: Any) -> Event:
        pid = MAIN_PID if kind == "revoked" else POOL_PID
        return self.make(kind, ts, worker, pid, worker=worker, **fields)


def exception(exc_type: str, message: str) -> dict[str, str]:
    return {
        "exc_type": exc_type,
        "exc_message": message,
        "traceback": f"Traceback (most recent call last):\n  ...\n{exc_type}: {message}\n",
    }


def lifecycle(
    task_id: str,
    name: str,
    t: float,
    outcome: str = "SUCCESS",
    *,
    worker: str = W1,
    sender: str = WEB,
    runtime: float = 1.0,
    result: Any = None,
    exc: tuple[str, str] = ("ValueError", "boom"),
    parent_id: str | None = None,
    root_id: str | None = None,
    trace_id: str | None = None,
    group_id: str | None = None,
    **sent_fields: Any,
) -> list[Event]:
    """One task run to ``outcome``: sent at ``t``, received 0.1 s later, started
    0.2 s later, finished ``runtime`` after that; ``sent_fields`` (args, chain,
    chord_id, ...) go into its ``sent`` event."""
    task = Task(task_id, name, parent_id, root_id, trace_id, group_id)
    found = [task.sent(t, sender, **sent_fields)]
    if outcome == "PENDING":
        return found
    found.append(task.received(t + 0.1, worker))
    if outcome == "REVOKED":
        flags = {"terminated": False, "expired": False, "signum": None}
        return [*found, task.ended("revoked", t + 0.2, worker, **flags)]
    found.append(task.started(t + 0.2, worker))
    end = t + 0.2 + runtime
    if outcome == "SUCCESS":
        found.append(
            task.ended("succeeded", end, worker, retries=0, runtime=runtime, result=result)
        )
    elif outcome == "FAILURE":
        found.append(
            task.ended("failed", end, worker, retries=0, runtime=runtime, **exception(*exc))
        )
    elif outcome == "RETRY":
        retry = {"retries": 0, "attempt": 1, "retry_at": end + 60, "runtime": runtime}
        found.append(task.ended("retry", end, worker, **retry, **exception(*exc)))
        again = {**sent_fields, "retries": 1, "parent_id": task_id, "eta": "2030-01-01T00:00:00"}
        found.append(task.sent(end + 0.01, worker, **again))
    else:
        assert outcome == "STARTED", outcome
    return found


def worker_event(kind: str, worker: str, ts: float, **fields: Any) -> Event:
    return event(kind, ts, worker, MAIN_PID, worker=worker, **fields)


def registry_entry(name: str, **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "module": name.rsplit(".", 1)[0],
        "signature": "(*args, **kwargs)",
        "queue": "celery",
        "max_retries": 3,
        "default_retry_delay": 180,
        "autoretry_for": [],
        "retry_backoff": False,
        "rate_limit": None,
        "time_limit": None,
        "soft_time_limit": None,
        "acks_late": False,
        "ignore_result": False,
    }
    entry.update(overrides)
    return entry


def ok(client: TestClient, url: str, **params: Any) -> Any:
    response = client.get(url, params=params)
    assert response.status_code == 200, (url, params, response.text)
    return response.json()


def ids(client: TestClient, **params: Any) -> list[str]:
    return [task["id"] for task in ok(client, "/api/tasks", **params)["tasks"]]


def detail_of(response: Any) -> Any:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["detail"]


ADD_OLD = "0a3c71f2-5b1e-4c1d-9f10-6d0e5b2a7c01"


CHARGE = "1b4d82a3-6c2f-4d2e-8a21-7e1f6c3b8d02"


ADD_RUNNING = "2c5e93b4-7d30-4e3f-9b32-8f207d4c9e03"


EMAIL_RETRY = "3d6fa4c5-8e41-4f40-ac43-90318e5daf04"


EMAIL_REVOKED = "4e70b5d6-9f52-4051-bd54-a1429f6eb005"


ADD_CHILD = "5f81c6e7-a063-4162-ce65-b253a07fc106"


TIE_A = "6a92d7f8-b174-4273-df76-c364b18ad207"


TIE_B = "6a92d7f8-b174-4273-df76-c364b18ad208"


TIE_C = "6a92d7f8-b174-4273-df76-c364b18ad209"


NEWEST_FIRST = [
    ADD_CHILD,
    EMAIL_REVOKED,
    EMAIL_RETRY,
    TIE_C,
    TIE_B,
    TIE_A,
    ADD_RUNNING,
    CHARGE,
    ADD_OLD,
]


def catalog(now: float) -> list[Event]:
    """Nine tasks in every state, seen from 2 h ago to 1 min ago; three at the same instant."""
    return [
        *lifecycle(
            ADD_OLD, "proj.tasks.add", now - 7200, args=(2, 3), result=5, trace_id="trace-shop"
        ),
        *lifecycle(
            CHARGE,
            "proj.tasks.charge",
            now - 3000,
            "FAILURE",
            worker=W2,
            kwargs={"customer": "cus_ALICE", "amount": 1250},
            trace_id="trace-pay",
            exc=("proj.errors.PaymentDeclined", "insufficient funds"),
        ),
        *lifecycle(ADD_RUNNING, "proj.tasks.add", now - 1800, "STARTED", args=(100, 2)),
        *lifecycle(TIE_A, "proj.tasks.ping", now - 900),
        *lifecycle(TIE_B, "proj.tasks.ping", now - 900),
        *lifecycle(TIE_C, "proj.tasks.ping", now - 900),
        *lifecycle(
            EMAIL_RETRY,
            "proj.tasks.send_email",
            now - 600,
            "RETRY",
            worker=W2,
            args=("bob@example.com",),
            exc=("smtplib.SMTPServerDisconnected", "connection unexpectedly closed"),
        ),
        *lifecycle(
            EMAIL_REVOKED,
            "proj.tasks.send_email",
            now - 300,
            "REVOKED",
            worker=W2,
            args=("carol@example.com",),
            kwargs={"subject": "discount 100%"},
        ),
        *lifecycle(
            ADD_CHILD,
            "proj.tasks.add",
            now - 60,
            "PENDING",
            sender=W1,
            args=(1, 1),
            parent_id=ADD_OLD,
            root_id=ADD_OLD,
            trace_id="trace-shop",
        ),
    ]


FETCH = "7b03e819-c285-4384-e087-d475c29be308"


PARSE = "8c14f92a-d396-4495-f198-e586d3acf409"


def retried_twice(t: float) -> list[Event]:
    """proj.tasks.fetch: two attempts time out and are retried, the third succeeds.

    queued 0.2 s, waiting in worker 0.3 s, three runs of 1 s, waiting for
    retry 2.1 s and 3.5 s; it spawns proj.tasks.parse when it succeeds.
    """
    fetch = Task(FETCH, "proj.tasks.fetch", trace_id="trace-feed")
    call = {"args": ["https://example.com/feed"], "kwargs": {"timeout": 5}}
    # Celery re-sends a retried message from the worker, naming the task itself as parent.
    again = Task(FETCH, "proj.tasks.fetch", parent_id=FETCH, trace_id="trace-feed")
    eta = "2030-01-01T00:00:00+00:00"
    found = [
        fetch.sent(t, **call),
        fetch.received(t + 0.2, W1),
        fetch.started(t + 0.5, W1),
        fetch.ended("retry", t + 1.5, W1, retries=0, attempt=1, retry_at=t + 3.5, runtime=1.0,
                    **exception("requests.exceptions.Timeout", "read timed out (attempt 1)")),
        again.sent(t + 1.6, W1, retries=1, eta=eta, **call),
        again.received(t + 3.5, W1, retries=1),
        again.started(t + 3.6, W1, retries=1),
        again.ended("retry", t + 4.6, W1, retries=1, attempt=2, retry_at=t + 6.6, runtime=1.0,
                    **exception("requests.exceptions.Timeout", "read timed out (attempt 2)")),
        again.sent(t + 4.7, W1, retries=2, eta=eta, **call),
        again.received(t + 8.0, W1, retries=2),
        again.started(t + 8.1, W1, retries=2),
        again.ended("succeeded", t + 9.1, W1, retries=2, runtime=1.0,
                    result={"status": 200, "items": 3}),
    ]  # fmt: skip
    child = {"parent_id": FETCH, "root_id": FETCH, "trace_id": "trace-feed"}
    return found + lifecycle(PARSE, "proj.tasks.parse", t + 9.0, sender=W1, **child)


EXPECTED_KINDS = ["sent", "received", "started", "retry"] * 2 + [
    "sent", "received", "started", "succeeded",
]  # fmt: skip


def check_retried_twice(task: dict[str, Any], t: float) -> None:
    assert task["state"] == "SUCCESS"
    assert task["retries"] == 2
    assert task["worker"] == W1
    assert task["parent_id"] is None  # a retry naming itself is not a parent
    assert task["sent_at"] == pytest.approx(t)
    assert task["received_at"] == pytest.approx(t + 0.2)
    assert task["started_at"] == pytest.approx(t + 0.5)
    assert task["finished_at"] == pytest.approx(t + 9.1)
    assert task["result"] == {"status": 200, "items": 3}
    assert task["exception"] is None
    assert task["traceback"] is None
    assert [e["kind"] for e in task["events"]] == EXPECTED_KINDS
    assert [e.get("retries") for e in task["events"]] == [0] * 4 + [1] * 4 + [2] * 4
    attempts = task["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [a["state"] for a in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert [a["started_at"] for a in attempts] == pytest.approx([t + 0.5, t + 3.6, t + 8.1])
    for number, attempt in enumerate(attempts[:2], start=1):
        assert attempt["exc_type"] == "requests.exceptions.Timeout"
        assert attempt["exc_message"] == f"read timed out (attempt {number})"
        assert attempt["traceback"].endswith(f"Timeout: read timed out (attempt {number})\n")
        assert attempt["retry_at"] == pytest.approx(attempt["ended_at"] + 2.0)
        assert attempt["runtime"] == 1.0
        assert attempt["worker"] == W1
    assert attempts[2]["exc_type"] is None
    assert attempts[2]["exc_message"] is None
    assert attempts[2]["traceback"] is None
    assert attempts[2]["ended_at"] == pytest.approx(t + 9.1)


def edge_set(flow: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["source"], e["target"], e["kind"]) for e in flow["edges"]}


def node_map(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {n["id"]: n for n in flow["nodes"]}
    assert len(found) == len(flow["nodes"]), "duplicate node ids"
    return found


STEP = [f"9d25a03b-e4a7-45a6-a2a9-f697e4bd050{i}" for i in range(5)]


def chain_events(t: float, second: str) -> list[Event]:
    """chain(step1, step2, step3, step4): step1 succeeded, step2 reached ``second``."""
    names = [f"proj.tasks.step{i}" for i in range(5)]
    links = [link(STEP[i], names[i]) for i in range(1, 5)]
    return [
        *lifecycle(STEP[1], names[1], t, chain=links[1:]),
        *lifecycle(
            STEP[2],
            names[2],
            t + 1.5,
            second,
            sender=W1,
            parent_id=STEP[1],
            root_id=STEP[1],
            chain=links[2:],
        ),
    ]


FANOUT = "a1b2c3d4-0000-4000-8000-000000000000"


HEADER = [f"a1b2c3d4-0000-4000-8000-00000000000{i}" for i in range(1, 4)]


COLLECT = "a1b2c3d4-0000-4000-8000-0000000000cb"


CHORD_GROUP = "a1b2c3d4-0000-4000-8000-0000000000aa"


def chord_events(t: float) -> list[Event]:
    """fanout spawns chord([fetch_page x 3], collect); the last member sends collect."""
    context = {"root_id": FANOUT, "trace_id": FANOUT}
    found = lifecycle(FANOUT, "proj.tasks.fanout", t)
    for index, member in enumerate(HEADER):
        found += lifecycle(
            member,
            "proj.tasks.fetch_page",
            t + 1 + index * 0.1,
            sender=W1,
            parent_id=FANOUT,
            group_id=CHORD_GROUP,
            group_index=index,
            chord_id=COLLECT,
            chord_name="proj.tasks.collect",
            args=(index,),
            result=index * 10,
            **context,
        )
    found += lifecycle(
        COLLECT,
        "proj.tasks.collect",
        t + 3,
        sender=W1,
        parent_id=HEADER[-1],
        group_id=CHORD_GROUP,
        args=([0, 10, 20],),
        **context,
    )
    return found


PARENT = "b0000000-0000-4000-8000-000000000001"


SPAWNED = "b0000000-0000-4000-8000-000000000002"


ORPHAN = "b0000000-0000-4000-8000-000000000003"


GHOST = "b0000000-0000-4000-8000-00000000dead"


BIG_GROUP = "c0000000-0000-4000-8000-0000000000aa"


def big_group_member(index: int) -> str:
    return f"c0000000-0000-4000-8000-{index:012d}"


def big_group(t: float) -> list[Event]:
    """group(resize.s(i) for i in range(300)) sent from a web request: 240 succeeded,
    30 failed, 30 still running."""
    found: list[Event] = []
    for index in range(300):
        outcome = {0: "FAILURE", 1: "STARTED"}.get(index % 10, "SUCCESS")
        found += lifecycle(
            big_group_member(index),
            "proj.tasks.resize",
            t + index * 0.01,
            outcome,
            group_id=BIG_GROUP,
            group_index=index,
            trace_id=BIG_GROUP,
            args=(index,),
        )
    return found


TRACE = "d0000000000040008000000000000000"


CHECKOUT = [f"d0000000-0000-4000-8000-00000000000{i}" for i in range(1, 5)]


ALIVE, QUIET, LOST, GONE = (
    "celery@alive",
    "celery@quiet",
    "celery@lost",
    "celery@gone",
)


UNICODE_ID = "tâche-✓-🚀"


SCRIPT = "<script>alert(1)</script>"


MARKUP = "<img src=x onerror=alert(1)>"  # markup without a slash, to stay one path segment


API_PATHS = {
    "/api/tasks",
    "/api/tasks/{task_id}",
    "/api/flows/{task_id}",
    "/api/flows/{task_id}/waterfall",
    "/api/flows/{task_id}/graph.dot",
    "/api/flows/{task_id}/graph.svg",
    "/api/groups/{group_id}/members",
    "/api/traces/{trace_id}",
    "/api/traces/{trace_id}/graph",
    "/api/flows",
    "/api/traces",
    "/api/errors",
    "/api/registry",
    "/api/workers",
    "/api/health",
    "/api/stats",
    "/api/problems",
    "/api/queues",
    "/api/workers/{hostname}",
}


def task(task_id: str, start: float, end: float | None, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id, "name": fields.pop("name", "proj.step"), "state": "SUCCESS",
        "parent_id": None, "root_id": "a", "group_id": None, "group_index": None,
        "chord_id": None, "chord_name": None, "trace_id": "t", "worker": "w", "retries": 0,
        "seen_at": start, "sent_at": start, "received_at": start + 0.1,
        "started_at": start + 0.2, "finished_at": end, "runtime": None, "chain": [],
        "exc_type": None, **fields,
    }  # fmt: skip
