"""Watching what a real worker did: the flows and tasks a test reads back from a server."""

from __future__ import annotations

from typing import Any

from celery import Celery
from starlette.testclient import TestClient

from tests.support import wait_for


class Observed:
    """A sending app with ``init(app)``, a real worker, and the API reading the stream."""

    def __init__(self, app: Celery, http: TestClient) -> None:
        self.app = app
        self.http = http

    def task(self, task_id: str, state: str | None = None) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            response = self.http.get(f"/api/tasks/{task_id}")
            if response.status_code != 200:
                return None
            found: dict[str, Any] = response.json()
            return found if state is None or found["state"] == state else None

        found: dict[str, Any] = wait_for(ready, timeout=30)
        return found

    def flow(self, task_id: str, settled: int, **params: Any) -> dict[str, Any]:
        """The flow, once ``settled`` task nodes are in a final state."""

        def ready() -> dict[str, Any] | None:
            response = self.http.get(f"/api/flows/{task_id}", params=params)
            if response.status_code != 200:
                return None
            flow: dict[str, Any] = response.json()
            done = [
                n for n in flow["nodes"]
                if n["kind"] == "task" and n["state"] in ("SUCCESS", "FAILURE", "REVOKED")
            ]  # fmt: skip
            return flow if len(done) >= settled else None

        found: dict[str, Any] = wait_for(ready, timeout=40)
        return found


def edges(flow: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    return {(e["source"], e["target"]) for e in flow["edges"] if e["kind"] == kind}


def node(flow: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in flow["nodes"] if n["id"] == node_id)
