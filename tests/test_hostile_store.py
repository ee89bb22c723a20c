"""Pages never 500 on stored data: every route over tasks built from arbitrary values.

The decoder bounds what arrives today, but a store may hold what older
versions let through (an infinite time, args nested 900 deep, a name with a
NUL). Rendering must be total: any float, any nesting, any length.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store import Store
from stemtrace.store.ingest import Ingestor
from tests.factories import examples, unchecked
from tests.site import copy_of

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


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_tasks())
def test_every_route_answers_for_tasks_made_of_arbitrary_values(
    migrated: Path, case: tuple[list[dict[str, Any]], str, str]
) -> None:
    events, task_id, trace_id = case
    with tempfile.TemporaryDirectory() as folder:
        path = copy_of(migrated, Path(folder) / "h.db")
        store = Store(path)
        try:
            ingestor = Ingestor(store.writer())
            for one in events:  # the ingestor takes what the decoder would have refused
                try:
                    ingestor.ingest([real(one)])
                except Exception:
                    continue  # SQLite itself refused it (a NaN time): nothing stored
        finally:
            store.close()
        app = create_app(Settings(db=str(path), consumer=False))
        with TestClient(app) as client:
            for route in ROUTES:
                url = route.format(id=quote(task_id, safe=""), trace=quote(trace_id, safe=""))
                response = client.get(url)
                assert response.status_code < 500, (url, response.text[:500])
                if response.headers.get("content-type", "").startswith("application/json"):
                    response.json()  # valid JSON: no NaN or Infinity
