"""Pages never 500 on stored data: every route over tasks built from arbitrary values.

The decoder bounds what arrives today, but a store may hold what older
versions let through (an infinite time, args nested 900 deep, a name with a
NUL). Rendering must be total: any float, any nesting, any length; and so must
what each backend gives back of what it took (each example a fresh store of the
test's backend; PostgreSQL runs fewer examples, see :data:`EXAMPLES`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.core import events as ev
from stemtrace.core.jsonio import encode
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import open_store, parse_target
from tests.factories import W1, Task, examples, registry_entry, unchecked, worker_event
from tests.site import Site, store_copy

INT64 = 2**63 - 1

times = st.one_of(
    st.floats(allow_nan=False),  # infinities, 1e308, -1e308, subnormals
    st.sampled_from([1e15, 2.6e11, -1e12, 0.0, 1.7e9, 1e400, -math.inf]),
    st.integers(min_value=-INT64, max_value=INT64),
)
texts = st.text(max_size=60) | st.sampled_from(["\x00", "<script>x</script>", "a" * 20_000])
scalars = st.none() | st.booleans() | st.integers(-INT64, INT64) | st.floats() | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


class Deep:
    """Stands for a value nested ``depth`` levels (Hypothesis could not print the value)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def real(event: dict[str, Any]) -> dict[str, Any]:
    return {k: nested(v.depth) if isinstance(v, Deep) else v for k, v in event.items()}


values = json_values | st.sampled_from([Deep(900), Deep(2000)])
ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip("/") == s and s.strip())


@st.composite
def hostile_tasks(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, str]:
    task_id, child_id, trace_id = draw(ids), draw(ids), draw(ids)
    name = draw(texts | st.none())
    worker = draw(texts)

    def drawn(kind: str, tid: str, **fields: Any) -> dict[str, Any]:
        """An event of task ``tid`` with hostile common fields."""
        pid = draw(st.integers(-INT64, INT64))
        return unchecked(kind, draw(times), worker, pid, eid=draw(texts), task_id=tid,
                         name=name, worker=worker, **fields)  # fmt: skip

    events = [
        drawn("sent", task_id, args=draw(values), kwargs=draw(values), trace_id=trace_id,
              root_id=task_id, retries=0, eta=draw(texts | st.none()),
              chain=[{"id": child_id, "name": draw(texts | st.none())}]),
        drawn("started", task_id, retries=0),
        drawn("retry", task_id, retries=0, attempt=1, exc_type=draw(texts),
              exc_message=draw(texts), traceback=draw(texts), retry_at=draw(times)),
        drawn("started", task_id, retries=1),
        drawn(draw(st.sampled_from(["succeeded", "failed", "revoked"])), task_id, retries=1,
              result=draw(values), runtime=draw(times), exc_type=draw(texts)),
        drawn("sent", child_id, parent_id=task_id, root_id=task_id, trace_id=trace_id,
              group_id=draw(ids), group_index=draw(st.integers(-INT64, INT64)),
              chord_id=draw(ids), args=draw(values)),
        unchecked("worker_online", draw(times), worker, 1, eid="w", worker=worker,
                  queues=draw(values), pool=draw(texts),
                  concurrency=draw(st.integers(-INT64, INT64)), freq=draw(times),
                  tasks=[{"name": draw(texts), "signature": draw(texts),
                          "max_retries": draw(times)}]),
        unchecked("worker_heartbeat", draw(times), worker, 1, eid="h", worker=worker,
                  loadavg=draw(values), active=draw(st.integers(-INT64, INT64))),
    ]  # fmt: skip
    return events, task_id, trace_id


ROUTES = (
    "/", "/executions", "/executions?state=FAILURE", "/tasks/{id}", "/flows/{id}",
    "/traces/{trace}", "/registry", "/workers", "/status", "/api/tasks", "/api/tasks/{id}",
    "/api/flows/{id}",
    "/api/flows/{id}/waterfall", "/api/flows/{id}/graph.dot", "/api/traces/{trace}",
    "/api/registry", "/api/workers", "/api/health", "/api/stats?since=30d&step=3600",
)  # fmt: skip


EXAMPLES = {"sqlite": examples(20), "postgresql": examples(8)}
"""Examples per backend. Rendering is the same code on both and SQLite's 20 cover it;
PostgreSQL's examples check what its store takes and gives back (double precision,
jsonb and text without NUL where SQLite keeps what it is given), which the hostile
constants every example draws from (NUL, infinities, 1e400, 2**63 - 1, 900 and 2,000
levels of nesting, 20,000 characters) reach within a few examples; each costs it a
database and an app's start and stop (about 1.4 s an example here, 0.5 s on SQLite)."""


def test_every_route_answers_for_tasks_made_of_arbitrary_values(
    db_target: str, tmp_path: Path
) -> None:
    @settings(
        max_examples=EXAMPLES[parse_target(db_target).kind],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(hostile_tasks())
    def every_route_answers(case: tuple[list[dict[str, Any]], str, str]) -> None:
        events, task_id, trace_id = case
        with store_copy(db_target, tmp_path) as target:
            store = open_store(target)
            try:
                writer = store.open_writer()
                for one in events:  # the writer takes what the decoder would have refused
                    try:
                        writer.ingest([real(one)])
                    except Exception:
                        continue  # the database refused it (a NaN time): nothing stored
            finally:
                store.close()
            app = create_app(Settings(db=target, consumer=False))
            with TestClient(app) as client:
                for route in ROUTES:
                    url = route.format(id=quote(task_id, safe=""), trace=quote(trace_id, safe=""))
                    response = client.get(url)
                    assert response.status_code < 500, (url, response.text[:500])
                    if response.headers.get("content-type", "").startswith("application/json"):
                        response.json()  # valid JSON: no NaN or Infinity

    every_route_answers()


NUL = "\x00"


def test_texts_with_a_nul_the_decoder_accepts_are_served_on_every_route(site: Site) -> None:
    """A NUL in a free text (an argument, an exception's message and traceback, a queue a
    worker consumes, a task definition's signature) is kept by SQLite and kept as U+FFFD
    by PostgreSQL, whose text holds none. PostgreSQL refused the worker's announcement
    whole (the definition) and answered 500 for the worker's page (the retry's history
    read as jsonb, which refuses the escape \\u0000)."""
    now = time.time()
    eta = datetime.fromtimestamp(now + 600, UTC).isoformat()
    task = Task("nul-task", "proj.tasks.nul")
    definition = registry_entry("proj.tasks.nul", signature=f"(x{NUL})")
    retried = {"exc_type": "KeyError", "exc_message": f"m{NUL}", "traceback": f"tb{NUL}"}
    events = [
        worker_event("worker_online", W1, now - 100, freq=2.0, queues=["celery", f"q{NUL}"],
                     tasks=[definition]),
        task.sent(now - 50, args=[f"a{NUL}"], kwargs={"k": f"v{NUL}"}),
        task.received(now - 49, W1),
        task.started(now - 48, W1),
        task.ended("retry", now - 47, W1, retries=0, attempt=1, retry_at=now + 600, **retried),
        task.sent(now - 46, retries=1, eta=eta),
        task.received(now - 45, W1, retries=1, eta=eta),
    ]  # fmt: skip
    decoded = ev.decode_frame(encode({"v": 1, "events": events})).events
    assert len(decoded) == len(events)
    client = site(decoded)
    routes = [
        "/", "/executions", f"/tasks/{task.id}", f"/flows/{task.id}", "/queues", "/workers",
        f"/workers/{quote(W1)}", "/problems", "/registry", f"/api/tasks/{task.id}",
        "/api/queues", f"/api/workers/{quote(W1)}", "/api/problems", "/api/registry",
    ]  # fmt: skip
    assert {route: client.get(route).status_code for route in routes} == dict.fromkeys(routes, 200)
    stored = client.get(f"/api/tasks/{task.id}").json()
    assert stored["args"] in ([f"a{NUL}"], ["a\ufffd"]), stored["args"]
    assert {f"m{NUL}", "m\ufffd"} & set(texts_in(stored)), stored  # the retry's message
    [entry] = client.get("/api/registry").json()["tasks"]
    assert entry["signature"] in (f"(x{NUL})", "(x\ufffd)"), entry
    assert [w["hostname"] for w in client.get("/api/workers").json()["workers"]] == [W1]


def texts_in(value: Any) -> Iterator[str]:
    """Every text in a JSON value, keys and values, however deep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from texts_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from texts_in(item)
