"""A trace id set by an HTTP request reaches every task it sets off, in a real worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, chain, chord
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import stemtrace
from stemtrace import TraceMiddleware
from tests.proj import make_app
from tests.support import Scenario, celery_worker, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def app(scenario: Scenario) -> Iterator[Celery]:
    celery_app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(celery_app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    yield celery_app
    capture.publisher.close(1.0)
    celery_app.close()


def web_app(celery_app: Celery) -> Starlette:
    add, tsum, spawn = (celery_app.tasks[n] for n in ("proj.add", "proj.tsum", "proj.spawn"))

    def order(request: Request) -> JSONResponse:  # sync: runs in a worker thread
        spawned = spawn.delay(2)
        fanned = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s())).apply_async()
        return JSONResponse({"ids": [spawned.id, fanned.id], "state": request.state.trace_id})

    async def retry(request: Request) -> JSONResponse:
        return JSONResponse({"ids": [celery_app.tasks["proj.flaky"].delay(1).id]})

    routes = [Route("/order", order, methods=["POST"]), Route("/retry", retry, methods=["POST"])]
    return Starlette(routes=routes, middleware=[_middleware()])


def _middleware() -> object:
    from starlette.middleware import Middleware

    return Middleware(TraceMiddleware)


def test_trace_from_traceparent_reaches_every_descendant(scenario: Scenario, app: Celery) -> None:
    with celery_worker(scenario), TestClient(web_app(app)) as http:
        response = http.post("/order", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
        assert response.headers["x-trace-id"] == TRACE
        assert response.json()["state"] == TRACE
        spawned_id, callback_id = response.json()["ids"]
        retried = http.post("/retry", headers={"X-Request-ID": "req-42"})
        assert retried.headers["x-trace-id"] == "req-42"
        retry_id = retried.json()["ids"][0]

        def settled() -> bool:
            events = scenario.events()
            done = {e["task_id"] for e in events if e["kind"] in ("succeeded", "failed")}
            sent = {e["task_id"] for e in events if e["kind"] == "sent"}
            return {spawned_id, callback_id, retry_id} <= done and sent <= done

        wait_for(settled, timeout=40)
    events = scenario.events()
    order_events = [
        e
        for e in events
        if e.get("task_id") and e.get("trace_id") != "req-42" and e["task_id"] != retry_id
    ]
    sent = {e["task_id"] for e in order_events if e["kind"] == "sent"}
    # spawn + its 2 children; chain head + 2 chord members + chord callback
    assert len(sent) == 7
    assert {e["trace_id"] for e in order_events if "trace_id" in e} == {TRACE}
    retry_events = [e for e in events if e.get("task_id") == retry_id]
    assert [e["kind"] for e in retry_events].count("retry") == 2
    assert {e["trace_id"] for e in retry_events if "trace_id" in e} == {"req-42"}


def test_a_request_without_ids_gets_a_fresh_trace(scenario: Scenario, app: Celery) -> None:
    with TestClient(web_app(app)) as http:
        first = http.post("/retry", headers={"traceparent": "garbage"}).headers["x-trace-id"]
        second = http.post("/retry").headers["x-trace-id"]
    assert first != second and len(first) == 32
    sent = wait_for(lambda: [e for e in scenario.events() if e["kind"] == "sent"])
    wait_for(lambda: len(scenario.events()) == 2)
    assert {e["trace_id"] for e in scenario.events()} == {first, second}
    assert sent
