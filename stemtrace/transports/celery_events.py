"""Celery's own events (``celery worker -E``), read like Flower reads them.

Workers that run without ``init(app)`` still show up: this reader listens on
Celery's event exchange (``celeryev``), turns each Celery event into a
stemtrace event marked ``"source": "celery"``, and hands them to the usual
consumer as frames. The store merges them with what ``init(app)`` captured
for the same task id, its richer data winning (see ``detail_rank`` in
:mod:`stemtrace.store.ingest`). Celery's events carry args and results as
repr strings and no group, chord or chain structure; the pages say so.

Events are transient, as in Flower: while no server listens they are lost.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from stemtrace.core import coerce
from stemtrace.core import events as ev
from stemtrace.core.events import encode_frame

EXCHANGE = "celeryev"

_KINDS = {
    "task-sent": ev.SENT,
    "task-received": ev.RECEIVED,
    "task-started": ev.STARTED,
    "task-succeeded": ev.SUCCEEDED,
    "task-failed": ev.FAILED,
    "task-retried": ev.RETRY,
    "task-revoked": ev.REVOKED,
    "task-rejected": ev.REJECTED,
    "worker-online": ev.WORKER_ONLINE,
    "worker-heartbeat": ev.WORKER_HEARTBEAT,
    "worker-offline": ev.WORKER_OFFLINE,
}
_EXCEPTION = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.DOTALL)


def _repr_marker(value: Any) -> Any:
    """Celery sends args, kwargs and results as repr strings: show them as such."""
    if value is None:
        return None
    return {"__stemtrace__": "repr", "type": "celery event", "repr": str(value)[:8192]}


def _exception(text: Any) -> tuple[str | None, str | None]:
    if not isinstance(text, str) or not text:
        return None, None
    match = _EXCEPTION.match(text)
    if not match:
        return None, text
    message = match.group(2).strip()
    if len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"":
        message = message[1:-1]
    return match.group(1), message


def _float(value: Any) -> float | None:
    found = coerce.number(value)
    return None if found is None else float(found)


def convert(event: Any) -> ev.Event | None:
    """One Celery event as a stemtrace event, or ``None`` for what it cannot use."""
    if not isinstance(event, dict):
        return None
    kind = _KINDS.get(event.get("type", ""))
    ts = _float(event.get("timestamp"))
    if kind is None or ts is None:
        return None
    host = coerce.text(event.get("hostname")) or "unknown"
    found: ev.Event = {
        "kind": kind,
        "ts": ts,
        "host": host,
        "pid": coerce.count(event.get("pid")) or 0,
        "source": "celery",
    }
    if kind in ev.WORKER_KINDS:
        _add_worker_fields(found, event)
        return found
    task_id = coerce.text(event.get("uuid"))
    if task_id is None:
        return None
    _add_task_fields(found, event, task_id)
    _add_outcome_fields(found, event)
    return found


def _add_worker_fields(found: ev.Event, event: dict[str, Any]) -> None:
    """What a worker's online, heartbeat and offline events say of it."""
    host = found["host"]
    found["eid"] = f"celery:{event['type']}:{host}:{found['ts']}"
    found["worker"] = host
    found["sw_ver"] = coerce.text(event.get("sw_ver"))
    found["freq"] = _float(event.get("freq"))
    found["active"] = coerce.count(event.get("active"))
    found["processed"] = coerce.count(event.get("processed"))
    loadavg = event.get("loadavg")
    found["loadavg"] = [x for x in loadavg if isinstance(x, int | float)] if isinstance(
        loadavg, list | tuple
    ) else []  # fmt: skip


def _add_task_fields(found: ev.Event, event: dict[str, Any], task_id: str) -> None:
    """What every task event says: the task, where it runs, what it came from."""
    found["eid"] = f"celery:{event['type']}:{task_id}:{found['ts']}"
    found["task_id"] = task_id
    found["name"] = coerce.text(event.get("name"))
    if found["kind"] != ev.SENT:
        found["worker"] = found["host"]
    for field in ("root_id", "parent_id", "eta", "expires", "queue", "exchange", "routing_key"):
        if field in event:
            found[field] = coerce.text(event.get(field))
    if "retries" in event:
        found["retries"] = coerce.count(event.get("retries"))


def _add_outcome_fields(found: ev.Event, event: dict[str, Any]) -> None:
    """What only some kinds of task event say: arguments, result, exception, why revoked."""
    kind = found["kind"]
    if kind in (ev.SENT, ev.RECEIVED):
        found["args"] = _repr_marker(event.get("args"))
        found["kwargs"] = _repr_marker(event.get("kwargs"))
        found["instrumented"] = False
    if kind == ev.SUCCEEDED:
        found["result"] = _repr_marker(event.get("result"))
        found["runtime"] = _float(event.get("runtime"))
    if kind in (ev.FAILED, ev.RETRY):
        found["exc_type"], found["exc_message"] = _exception(event.get("exception"))
        found["traceback"] = coerce.text(event.get("traceback"))
    if kind == ev.REVOKED:
        found["terminated"] = bool(event.get("terminated"))
        found["expired"] = bool(event.get("expired"))
        found["signum"] = coerce.count(event.get("signum"))
    if kind == ev.REJECTED:
        found["reason"] = "rejected (requeued)" if event.get("requeue") else "rejected"


class CeleryEventsReader:
    """A :class:`~stemtrace.transports.Reader` over Celery's event exchange."""

    def __init__(self, url: str) -> None:
        self.connection = Connection(url, connect_timeout=5, heartbeat=0)
        self.connection.ensure_connection(max_retries=1)
        self.channel = self.connection.channel()
        # As Celery does (celery.events.event.get_exchange): fanout on Redis, topic elsewhere.
        redis = self.connection.transport.driver_type == "redis"
        queue = Queue(
            f"stemtrace.celeryev.{socket.gethostname()}.{id(self):x}",
            exchange=Exchange(EXCHANGE, type="fanout" if redis else "topic"),
            routing_key="#",
            auto_delete=True,
            durable=False,
            queue_arguments={"x-message-ttl": 60_000, "x-expires": 120_000},
        )
        self.consumer = self.connection.Consumer(
            queue(self.channel), channel=self.channel, callbacks=[self._on_message],
            accept=["json"], no_ack=True,
        )  # fmt: skip
        self.consumer.consume()
        self._pending: list[ev.Event] = []
        self._counter = itertools.count(1)

    def _on_message(self, body: Any, message: Any) -> None:
        for item in body if isinstance(body, list) else [body]:
            converted = convert(item)
            if converted is not None and ev.validate_event(converted) is None:
                self._pending.append(converted)

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        with contextlib.suppress(TimeoutError):
            self.connection.drain_events(timeout=block)
            while len(self._pending) < count * 50:
                self.connection.drain_events(timeout=0.001)
        if not self._pending:
            return []
        batch, self._pending = self._pending, []
        return [(f"{next(self._counter):020d}", encode_frame(batch))]

    def commit(self, position: str) -> None:
        """Celery's events are not acknowledged: they are transient by design."""

    def lag(self, after: str | None) -> float | None:
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.cancel()
        with contextlib.suppress(Exception):
            self.connection.release()
