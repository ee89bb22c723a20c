"""Capture end to end: real ``celery worker`` processes, real Redis, the stream read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery, chain, chord, group

import stemtrace
from stemtrace.capture.capture import Capture
from tests.proj import BadRepr, Unserializable, make_app
from tests.support import Scenario, celery_worker, private_db, wait_for

TERMINAL = {"succeeded", "failed", "revoked", "rejected"}


@contextmanager
def sender(scenario: Scenario) -> Iterator[tuple[Celery, Capture]]:
    """The sending side: an app in the test process with ``init(app)``."""
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(
        app, stream=scenario.stream, flush_interval=0.05, transport_url=scenario.events_url
    )
    assert capture is not None
    try:
        yield app, capture
    finally:
        capture.publisher.close(1.0)
        app.close()


@pytest.fixture
def client(scenario: Scenario) -> Iterator[tuple[Celery, Capture]]:
    """The sending side, for a test that starts a worker of its own."""
    with sender(scenario) as found:
        yield found


@pytest.fixture(scope="module", params=["prefork", "solo"])
def worker(request: pytest.FixtureRequest, redis_available: None) -> Iterator[Scenario]:
    """A real worker of each pool, started once for the canvas tests, which only send
    tasks and read their events (starting and stopping a worker costs seconds)."""
    shared = Scenario(db=private_db(f"{request.node.nodeid}-{request.param}"))
    try:
        with celery_worker(shared, pool=request.param):
            yield shared
    finally:
        shared.cleanup()


@pytest.fixture
def canvas(worker: Scenario) -> Iterator[tuple[Scenario, Celery]]:
    """The module's worker's queue and stream, seen from now on (``Scenario.from_now``:
    the events of the tests before are not this test's), and an app sending to it."""
    scenario = worker.from_now()
    with sender(scenario) as (app, _):
        yield scenario, app


def kinds(scenario: Scenario, task_id: str) -> list[str]:
    return [e["kind"] for e in scenario.of(task_id)]


def finished(scenario: Scenario, *task_ids: str) -> bool:
    """Each task ended, and its sent event is in too (the sender flushes on its own clock)."""
    events = scenario.events()
    done = {e["task_id"] for e in events if e["kind"] in TERMINAL}
    sent = {e["task_id"] for e in events if e["kind"] == "sent"}
    return all(t in done and t in sent for t in task_ids)


def wait_finished(scenario: Scenario, *task_ids: str, timeout: float = 30) -> list[dict[str, Any]]:
    wait_for(lambda: finished(scenario, *task_ids), timeout=timeout)
    return scenario.events()


def one(events: list[dict[str, Any]], task_id: str, kind: str) -> dict[str, Any]:
    found = [e for e in events if e.get("task_id") == task_id and e["kind"] == kind]
    assert len(found) == 1, (task_id, kind, found)
    return found[0]


def test_chain_records_every_transition_and_the_planned_links(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    add = app.tasks["proj.add"]
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=20) == 10
    first = result.parent.parent.id
    second = result.parent.id
    events = wait_finished(scenario, first, second, result.id)

    for task_id in (first, second, result.id):
        # Publisher and worker send on their own schedules: compare, not order.
        assert sorted(e["kind"] for e in events if e.get("task_id") == task_id) == [
            "received",
            "sent",
            "started",
            "succeeded",
        ]
    sent = one(events, first, "sent")
    assert sent["chain"] == [
        {"id": second, "name": "proj.add"},
        {"id": result.id, "name": "proj.add"},
    ]
    assert sent["args"] == [1, 2] and sent["kwargs"] == {}
    assert sent["root_id"] == first and sent["parent_id"] is None
    assert sent["queue"] == scenario.queue
    assert one(events, second, "sent")["parent_id"] == first
    assert one(events, result.id, "sent")["parent_id"] == second
    succeeded = one(events, result.id, "succeeded")
    assert succeeded["result"] == 10 and succeeded["runtime"] >= 0
    started = one(events, first, "started")
    assert started["worker"].startswith("w") and started["pid"] > 0
    # With no trace set, the trace is the root task's id, on every link.
    assert {e["trace_id"] for e in events if e["kind"] in ("sent", "started")} == {first}
    for event in events:
        assert event["ts"] > 0 and event["host"] and event["eid"]


def test_group_members_share_the_group_and_one_trace(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    add = app.tasks["proj.add"]
    result = group(add.s(i, i) for i in range(4)).apply_async()
    assert result.get(timeout=20) == [0, 2, 4, 6]
    ids = [r.id for r in result.results]
    events = wait_finished(scenario, *ids)
    sent = [one(events, task_id, "sent") for task_id in ids]
    assert {e["group_id"] for e in sent} == {result.id}
    assert sorted(e["group_index"] for e in sent) == [0, 1, 2, 3]
    mine = [e for e in events if e.get("task_id") in ids and e.get("trace_id")]
    assert {e["trace_id"] for e in mine} == {result.id}


def test_chord_callback_id_is_known_when_the_header_is_sent(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    add, tsum = app.tasks["proj.add"], app.tasks["proj.tsum"]
    result = chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], tsum.s()).apply_async()
    assert result.get(timeout=20) == 12

    def header_sent() -> list[dict[str, Any]]:
        return [e for e in scenario.events() if e["kind"] == "sent" and e.get("chord_id")]

    wait_for(lambda: len(header_sent()) >= 3)  # frames may split them
    header = header_sent()
    assert len(header) == 3
    assert {e["chord_id"] for e in header} == {result.id}
    assert {e["chord_name"] for e in header} == {"proj.tsum"}
    events = wait_finished(scenario, result.id, *[e["task_id"] for e in header])
    callback = one(events, result.id, "sent")
    assert callback["parent_id"] in {e["task_id"] for e in header}
    assert callback["trace_id"] == header[0]["trace_id"]


def test_chain_inside_chord_inside_chain(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    add, tsum = app.tasks["proj.add"], app.tasks["proj.tsum"]
    with stemtrace.trace("nested-canvas") as trace_id:
        workflow = chain(
            add.s(1, 1),
            chord([chain(add.s(1), add.s(1)), add.s(10)], tsum.s()),
            add.s(100),
        )
        result = workflow.apply_async()
    assert result.get(timeout=30) == 2 + 1 + 1 + 2 + 10 + 100

    def sent_ids() -> set[str]:
        return {e["task_id"] for e in scenario.events() if e["kind"] == "sent"}

    # Each pool child publishes on its own: the last task's events may come
    # before a "sent" event another child published.
    wait_for(lambda: len(ids := sent_ids()) >= 6 and finished(scenario, result.id, *ids))
    events = scenario.events()
    task_ids = {e["task_id"] for e in events if e["kind"] == "sent"}
    assert len(task_ids) == 6  # 1 + (2 + 1) + callback + last link
    assert {e["trace_id"] for e in events if e["kind"] in ("sent", "started")} == {trace_id}
    assert all(finished(scenario, t) for t in task_ids)


def test_children_sent_from_a_task_point_to_their_parent(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    result = app.tasks["proj.spawn"].delay(3)
    child_ids = result.get(timeout=20)
    events = wait_finished(scenario, result.id, *child_ids)
    for child in child_ids:
        sent = one(events, child, "sent")
        assert sent["parent_id"] == result.id
        assert sent["root_id"] == result.id
        assert sent["trace_id"] == result.id
        assert sent["host"]  # sent from inside the worker


def test_retry_twice_then_succeed_records_three_attempts(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    with stemtrace.trace("retry-trace"):
        result = app.tasks["proj.flaky"].delay(7)
    assert result.get(timeout=20) == 7
    events = wait_finished(scenario, result.id)
    mine = [e for e in events if e.get("task_id") == result.id]
    assert [e["kind"] for e in mine if e["kind"] in ("started", "retry", "succeeded")] == [
        "started",
        "retry",
        "started",
        "retry",
        "started",
        "succeeded",
    ]
    retries = [e for e in mine if e["kind"] == "retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    for number, retry in enumerate(retries, start=1):
        assert retry["exc_type"] == "ConnectionError"
        assert retry["exc_message"] == f"attempt {number} failed"
        assert "Traceback (most recent call last)" in retry["traceback"]
        assert f"ConnectionError: attempt {number} failed" in retry["traceback"]
        assert retry["retry_at"] >= retry["ts"]
    resent = sorted((e for e in mine if e["kind"] == "sent"), key=lambda e: e["retries"])
    assert [e["retries"] for e in resent] == [0, 1, 2]
    assert [e["parent_id"] for e in resent[1:]] == [result.id, result.id]
    assert {e["trace_id"] for e in mine if "trace_id" in e} == {"retry-trace"}


def test_failure_mid_chain_keeps_the_planned_links(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    add, fail = app.tasks["proj.add"], app.tasks["proj.fail"]
    result = chain(add.s(1, 1), fail.s(), add.s(5), add.s(6)).apply_async()
    with pytest.raises(ValueError):
        result.get(timeout=20)
    broken = result.parent.parent.id
    first = result.parent.parent.parent.id
    events = wait_finished(scenario, first, broken)
    failed = one(events, broken, "failed")
    assert failed["exc_type"] == "ValueError"
    assert failed["exc_message"] == "broken link at 2"
    assert "raise ValueError" in failed["traceback"]
    planned = one(events, first, "sent")["chain"]
    assert [link["id"] for link in planned] == [broken, result.parent.id, result.id]
    assert not scenario.of(result.id)  # never sent, but known from the plan


def test_hostile_and_secret_payloads(
    canvas: tuple[Scenario, Celery],
) -> None:
    scenario, app = canvas
    login, echo = app.tasks["proj.login"], app.tasks["proj.echo"]
    by_name = login.delay("ada", "hunter2", options={"api_key": "k-123", "retries": 3})
    by_keyword = login.delay(user="bob", password="swordfish")
    huge = echo.delay("x" * 100_000)
    odd = echo.delay({"obj": Unserializable(), "bad": BadRepr(), "when": {1, 2}})
    for result in (by_name, by_keyword, huge, odd):
        result.get(timeout=20)
    events = wait_finished(scenario, by_name.id, by_keyword.id, huge.id, odd.id)
    scrubbed = {"__stemtrace__": "scrubbed"}
    sent = one(events, by_name.id, "sent")
    assert sent["args"] == ["ada", scrubbed]
    assert sent["kwargs"] == {"options": {"api_key": scrubbed, "retries": 3}}
    assert one(events, by_keyword.id, "sent")["kwargs"] == {"user": "bob", "password": scrubbed}
    assert "hunter2" not in str(events) and "swordfish" not in str(events)
    big = one(events, huge.id, "sent")["args"][0]
    assert big["__stemtrace__"] == "truncated" and big["length"] == 100_000
    assert len(big["preview"]) < 10_000
    assert one(events, huge.id, "succeeded")["result"]["__stemtrace__"] == "truncated"
    value = one(events, odd.id, "sent")["args"][0]
    assert value["obj"] == {
        "__stemtrace__": "repr",
        "type": "tests.proj.Unserializable",
        "repr": "<Unserializable <script>alert(1)</script>>",
    }
    assert value["bad"]["__stemtrace__"] == "repr"
    assert value["bad"]["repr"].startswith("<BadRepr instance")  # its __repr__ raised
    assert sorted(value["when"]) == [1, 2]


def test_revoked_task_records_how(scenario: Scenario, client: tuple[Celery, Capture]) -> None:
    app, _ = client
    with celery_worker(scenario, pool="prefork"):
        expired = app.tasks["proj.add"].apply_async((1, 2), expires=-1)
        running = app.tasks["proj.slow"].delay(30)
        wait_for(lambda: scenario.of(running.id, "started"))
        app.control.revoke(running.id, terminate=True)
        events = wait_finished(scenario, expired.id, running.id)
    assert one(events, expired.id, "revoked")["expired"] is True
    terminated = one(events, running.id, "revoked")
    assert terminated["terminated"] is True and terminated["expired"] is False
    assert not scenario.of(expired.id, "started")


def test_worker_lifecycle_and_registry(scenario: Scenario) -> None:
    with celery_worker(scenario, pool="solo", STEMTRACE_HEARTBEAT_INTERVAL="0.3"):
        wait_for(lambda: [e for e in scenario.events() if e["kind"] == "worker_heartbeat"])
    events = scenario.events()
    online = next(e for e in events if e["kind"] == "worker_online")
    assert online["queues"] == [scenario.queue]
    assert online["pool"] == "solo"
    tasks = {t["name"]: t for t in online["tasks"]}
    assert set(tasks) >= {"proj.add", "proj.flaky", "proj.login"}
    assert tasks["proj.flaky"]["max_retries"] == 3
    assert tasks["proj.login"]["signature"].startswith("(user: str, password: str")
    assert tasks["proj.add"]["module"] == "tests.proj"
    assert tasks["proj.add"]["queue"] == scenario.queue
    # the policy autoretry applies; a secret default never leaves the worker
    policy = tasks["proj.autoretry"]["retry_policy"]
    assert (policy["max_retries"], policy["countdown"]) == (4, 1)
    assert tasks["proj.autoretry"]["signature"].endswith("password: str = <scrubbed>) -> int")
    assert "hunter2" not in json.dumps(online)
    heartbeat = next(e for e in events if e["kind"] == "worker_heartbeat")
    assert heartbeat["worker"] == online["worker"] and heartbeat["active"] == 0
    assert events[-1]["kind"] == "worker_offline"


def test_the_threads_pool_keeps_each_tasks_trace_apart(
    scenario: Scenario, client: tuple[Celery, Capture]
) -> None:
    """Tasks running side by side in threads: each keeps its own trace for its children."""
    app, _ = client
    spawn = app.tasks["proj.spawn"]
    with celery_worker(scenario, pool="threads", concurrency=4):
        results = {}
        for name in ("alpha", "beta", "gamma"):
            with stemtrace.trace(f"trace-{name}"):
                results[name] = spawn.delay(3)
        children = {name: result.get(timeout=20) for name, result in results.items()}
        every = [r.id for r in results.values()] + [c for cs in children.values() for c in cs]
        events = wait_finished(scenario, *every)
    for name, result in results.items():
        for child in children[name]:
            sent = one(events, child, "sent")
            assert sent["trace_id"] == f"trace-{name}" and sent["parent_id"] == result.id
        assert one(events, result.id, "started")["trace_id"] == f"trace-{name}"
