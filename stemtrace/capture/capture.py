"""The capture of one Celery app: what each task transition becomes as an event.

:class:`Capture` holds the app's config, shaper and publisher; the receivers in
:mod:`stemtrace.capture.signals` find it and call its ``on_*`` methods. A task
body running is a :data:`_Run` on a per-thread stack.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

from stemtrace.capture.config import CaptureConfig
from stemtrace.capture.context import (
    TRACE_HEADER,
    current_trace_id,
    reset_trace_id,
    set_trace_id,
    valid_trace_id,
)
from stemtrace.capture.convert import (
    _celery_version,
    _exchange_name,
    _fast_trace_id,
    _link,
    _links,
    _qualname,
    _queue_name,
    _split_body,
)
from stemtrace.capture.payload import Shaper
from stemtrace.capture.publisher import Publisher
from stemtrace.capture.registry import describe_tasks, positional_params
from stemtrace.core import coerce
from stemtrace.core import events as ev
from stemtrace.transports import (
    describe_url,
    open_sender,
)

logger = logging.getLogger("stemtrace")

_HOST = socket.gethostname()
_time = time.time
_monotonic = time.monotonic


class Capture:
    """What ``init(app)`` set up for one Celery app: settings, shaper, publisher."""

    def __init__(self, app: Any, config: CaptureConfig, transport_url: str) -> None:
        self.app = app
        self.config = config
        self.transport_url = transport_url
        self.shaper = Shaper(
            max_field_size=config.max_field_size,
            max_string=config.max_string,
            scrub=config.scrub,
            secret_keys=config.scrub_keys,
            scrubber=config.scrubber,
        )
        self.publisher = Publisher(
            lambda: open_sender(transport_url, stream=config.stream, maxlen=config.stream_maxlen),
            buffer_size=config.buffer_size,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            describe=describe_url(transport_url),
        )
        self.publisher.tick_interval = config.heartbeat_interval
        self.publisher.exit_timeout = config.shutdown_timeout
        self.internal_errors = 0
        self._capture_result = config.capture_result
        self._params: dict[str, tuple[str, ...]] = {}
        self._local = _ThreadRuns()
        self._workers: tuple[str | None, ...] = ()
        """The workers of this process that are up (several when run in threads)."""
        self._workers_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------

    def emit(self, kind: str, host: str | None, **fields: Any) -> None:
        self.emit_fields(kind, host, fields)

    def emit_fields(self, kind: str, host: str | None, fields: dict[str, Any]) -> None:
        """Complete ``fields`` (taken over, not copied) into an event and queue it."""
        publisher = self.publisher
        fields["kind"] = kind
        fields["eid"] = publisher.next_eid()
        fields["ts"] = _time()
        fields["host"] = host or _HOST
        fields["pid"] = publisher.pid
        publisher.publish(fields)

    def params_of(self, name: str) -> tuple[str, ...]:
        found = self._params.get(name)
        if found is None:
            task = self.app.tasks.get(name)
            found = positional_params(task) if task is not None else ()
            self._params[name] = found
        return found

    def call_fields(self, name: str, args: Any, kwargs: Any) -> dict[str, Any]:
        if not self.config.capture_args:
            return {}
        if not isinstance(args, list | tuple):
            args = [args]
        if not isinstance(kwargs, dict):
            kwargs = {"__kwargs__": kwargs}
        shaped_args, shaped_kwargs = self.shaper.call(args, kwargs, self.params_of(name))
        return {"args": shaped_args, "kwargs": shaped_kwargs}

    def exception_fields(self, exc: BaseException | None, traceback: str | None) -> dict[str, Any]:
        limit = self.config.max_traceback
        return {
            "exc_type": _qualname(type(exc)) if exc is not None else None,
            "exc_message": self.shaper.text("exc_message", exc, limit) if exc is not None else None,
            "traceback": self.shaper.text("traceback", traceback, limit) if traceback else None,
        }

    # -- publisher side --------------------------------------------------------

    def on_publish(
        self,
        body: Any,
        headers: dict[str, Any],
        exchange: Any,
        routing_key: Any,
        declare: Any,
    ) -> None:
        task_id = headers.get("id")
        name = headers.get("task")
        if not isinstance(task_id, str):
            return  # protocol 1 messages carry no headers we can use
        parent_id = headers.get("parent_id")
        group_id = headers.get("group")
        trace_id = (
            current_trace_id()
            or valid_trace_id(headers.get(TRACE_HEADER))
            or (group_id if group_id and not parent_id else None)
            or headers.get("root_id")
            or task_id
        )
        headers[TRACE_HEADER] = trace_id
        args, kwargs, embed = _split_body(body)
        chord = embed.get("chord")
        fields: dict[str, Any] = {
            "task_id": task_id,
            "name": name,
            "trace_id": trace_id,
            "parent_id": parent_id,
            "root_id": headers.get("root_id"),
            "group_id": group_id,
            "group_index": coerce.count(headers.get("group_index")),
            "chain": _links(reversed(embed.get("chain") or ())),
            "retries": coerce.count(headers.get("retries")) or 0,
            "eta": coerce.text_of(headers.get("eta")),
            "expires": coerce.text_of(headers.get("expires")),
            "queue": _queue_name(declare, routing_key),
            "exchange": _exchange_name(exchange),
            "routing_key": coerce.text_of(routing_key),
        }
        if isinstance(chord, dict):
            link = _link(chord)
            fields["chord_id"], fields["chord_name"] = link["id"], link["name"]
        callbacks, errbacks = embed.get("callbacks"), embed.get("errbacks")
        if callbacks:
            fields["callbacks"] = _links(callbacks)
        if errbacks:
            fields["errbacks"] = _links(errbacks)
        fields.update(self.call_fields(str(name), args, kwargs))
        self.emit_fields(ev.SENT, None, fields)

    # -- worker main process ---------------------------------------------------

    def on_received(self, request: Any) -> None:
        # The worker's main process is its busiest: when the sender ran
        # init(app), its ``sent`` event already holds the structure.
        headers = getattr(request, "request_dict", None) or {}
        hostname = request.hostname
        retries = headers.get("retries")
        fields: dict[str, Any] = {
            "task_id": request.id,
            "name": request.name,
            "worker": hostname,
            "retries": retries if type(retries) is int else coerce.count(retries),
        }
        eta = headers.get("eta")
        if eta is not None:
            fields["eta"] = coerce.text_of(eta)
        if TRACE_HEADER in headers:
            fields["instrumented"] = True
        else:
            fields["instrumented"] = False
            fields["trace_id"] = None
            fields["parent_id"] = headers.get("parent_id")
            fields["root_id"] = headers.get("root_id")
            fields["group_id"] = headers.get("group")
            fields.update(self.call_fields(request.name, request.args, request.kwargs))
        self.emit_fields(ev.RECEIVED, hostname, fields)

    def on_revoked(
        self, sender: Any, request: Any, terminated: Any, signum: Any, expired: Any
    ) -> None:
        self.emit(
            ev.REVOKED,
            getattr(request, "hostname", None),
            task_id=request.id,
            name=getattr(sender, "name", None) or getattr(request, "task", None),
            worker=getattr(request, "hostname", None),
            terminated=bool(terminated),
            expired=bool(expired),
            # Celery passes a signal.Signals (an IntEnum): its number, not the enum
            signum=None if isinstance(signum, bool) or not isinstance(signum, int) else int(signum),
        )

    def on_rejected(self, consumer: Any, message: Any, reason: str) -> None:
        headers = getattr(message, "headers", None) or {}
        task_id = headers.get("id")
        if not isinstance(task_id, str):
            return
        worker = getattr(consumer, "hostname", None)
        self.emit(
            ev.REJECTED,
            worker,
            task_id=task_id,
            name=headers.get("task"),
            worker=worker,
            reason=reason,
        )

    def on_worker_ready(self, consumer: Any) -> None:
        hostname = getattr(consumer, "hostname", None)
        pool = getattr(consumer, "pool", None)
        queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or ()
        self.emit(
            ev.WORKER_ONLINE,
            hostname,
            worker=hostname,
            sw_ver=_celery_version(),
            pool=type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else None,
            concurrency=coerce.count(getattr(pool, "limit", None)),
            queues=[getattr(q, "name", str(q)) for q in queues],
            tasks=describe_tasks(self.app, self.shaper),
            freq=self.config.heartbeat_interval,
        )
        with self._workers_lock:
            self._workers = (*(h for h in self._workers if h != hostname), hostname)
        self.publisher.on_tick = self.heartbeats

    def heartbeats(self) -> None:
        """One heartbeat per worker of this process that is up."""
        for hostname in self._workers:
            self.heartbeat(hostname)

    def heartbeat(self, hostname: str | None) -> None:
        from celery.worker import state as worker_state

        try:
            loadavg = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            loadavg = []
        self.emit(
            ev.WORKER_HEARTBEAT,
            hostname,
            worker=hostname,
            active=len(worker_state.active_requests),
            processed=sum(worker_state.total_count.values()),
            loadavg=loadavg,
            freq=self.config.heartbeat_interval,
            dropped=self.publisher.dropped,
        )

    def on_worker_shutdown(self, worker: Any) -> None:
        hostname = getattr(worker, "hostname", None)
        with self._workers_lock:
            self._workers = tuple(h for h in self._workers if h != hostname)
            last = not self._workers
        if last:
            self.publisher.on_tick = None
        self.emit(ev.WORKER_OFFLINE, hostname, worker=hostname, dropped=self.publisher.dropped)
        if last:  # the others still run tasks and send heartbeats through it
            self.publisher.close(self.config.shutdown_timeout)

    # -- pool child (or the caller, for eager tasks) ----------------------------

    def _runs(self) -> list[_Run]:
        return self._local.runs

    def on_prerun(self, task_id: str, task: Any, args: Any, kwargs: Any) -> None:
        # Every task runs this and on_success: both read as little as they can.
        runs = self._local.runs
        if len(runs) > 1000:  # tasks killed without a closing signal
            runs.clear()
        name = task.name
        # On the stack first, so that the success signal finds this run by its
        # task id even if reading the request below fails.
        run: _Run = [task_id, name, None, None, _monotonic(), None]
        runs.append(run)
        request = task.request  # Celery's request stack: the costliest read here
        sent_trace = getattr(request, TRACE_HEADER, None)  # a header, as an attribute
        if type(sent_trace) is not str or not 0 < len(sent_trace) <= 128:
            headers = getattr(request, "headers", None)  # eager calls keep them here
            sent_trace = (
                _fast_trace_id(headers.get(TRACE_HEADER)) if isinstance(headers, dict) else None
            )
        hostname = getattr(request, "hostname", None)
        retries = getattr(request, "retries", None)
        if type(retries) is not int:
            retries = coerce.count(retries)
        fields: dict[str, Any] = {
            "task_id": task_id,
            "name": name,
            "worker": hostname,
            "retries": retries,
        }
        if sent_trace is not None:
            trace_id = sent_trace
        else:  # the sender had no init(app): its sent event is missing
            group_id = getattr(request, "group", None)
            parent_id = getattr(request, "parent_id", None)
            root_id = getattr(request, "root_id", None)
            trace_id = (
                current_trace_id()
                or (group_id if group_id and not parent_id else None)
                or root_id
                or task_id
            )
            fields["parent_id"] = parent_id
            fields["root_id"] = root_id
            fields["group_id"] = group_id
        fields["trace_id"] = trace_id
        run[2] = hostname
        run[3] = retries
        run[5] = set_trace_id(trace_id)
        if getattr(request, "is_eager", False):
            fields.update(self.call_fields(name, args, kwargs))
        self.emit_fields(ev.STARTED, hostname, fields)

    def end_run(self, task_id: str | None) -> float | None:
        """Close a run of the task body: restore the trace context, return its runtime.

        Called from the success, failure and retry signals, which fire after
        chain links and chord callbacks are sent, in the thread that ran the
        task; so no ``task_postrun`` receiver is needed on the hot path.
        """
        runs = self._runs()
        for index in range(len(runs) - 1, -1, -1):
            if runs[index][0] == task_id:
                return _finish(runs.pop(index))
        return None

    def on_success(self, task: Any, result: Any, runtime: Any) -> None:
        # The run on top of this thread's stack is the one ending (runs nest only
        # when a task applies another eagerly, whose own signals close it first):
        # it saves reading Celery's request stack again, its costliest property.
        runs = self._local.runs
        name = task.name
        measured: float | None
        if runs and runs[-1][1] == name:
            run = runs.pop()
            task_id, hostname, retries = run[0], run[2], run[3]
            measured = _finish(run)
        else:
            request = task.request
            task_id = request.id
            hostname = getattr(request, "hostname", None)
            retries = coerce.count(getattr(request, "retries", None))
            measured = self.end_run(task_id)
        fields: dict[str, Any] = {
            "task_id": task_id,
            "name": name,
            "worker": hostname,
            "retries": retries,
            "runtime": _micros(runtime) if type(runtime) is float else measured,
        }
        if self._capture_result:
            fields["result"] = self.shaper.value("result", result)
        self.emit_fields(ev.SUCCEEDED, hostname, fields)

    def on_failure(self, task: Any, task_id: str, exc: BaseException | None, einfo: Any) -> None:
        request = task.request
        self.emit(
            ev.FAILED,
            getattr(request, "hostname", None),
            task_id=task_id,
            name=task.name,
            worker=getattr(request, "hostname", None),
            retries=coerce.count(getattr(request, "retries", None)),
            runtime=self.end_run(task_id),
            **self.exception_fields(exc, getattr(einfo, "traceback", None)),
        )

    def on_retry(self, task: Any, request: Any, reason: Any, einfo: Any) -> None:
        exc = getattr(reason, "exc", None) or reason
        when = getattr(reason, "when", None)
        now = time.time()
        retry_at: float | None = None
        if isinstance(when, datetime):
            retry_at = when.timestamp()
        elif isinstance(when, int | float) and not isinstance(when, bool):
            retry_at = now + float(when)
        retries = coerce.count(getattr(request, "retries", None)) or 0
        self.emit(
            ev.RETRY,
            getattr(request, "hostname", None),
            task_id=request.id,
            name=getattr(task, "name", None),
            worker=getattr(request, "hostname", None),
            attempt=retries + 1,
            retries=retries,
            retry_at=retry_at,
            runtime=self.end_run(request.id),
            **self.exception_fields(exc, getattr(einfo, "traceback", None)),
        )


_Run = list[Any]
"""A task body running: task id, name, hostname, retries, monotonic start, trace token."""


class _ThreadRuns(threading.local):
    """``runs``: this thread's task bodies running now, innermost last."""

    def __init__(self) -> None:
        self.runs: list[_Run] = []


def _finish(run: _Run) -> float:
    """Restore the trace context a run set (if it got that far); its runtime in seconds."""
    if run[5] is not None:
        try:  # noqa: SIM105 (contextlib.suppress costs as much as the rest of the run's end)
            reset_trace_id(run[5])
        except ValueError:  # reset from a context that did not set it (another thread)
            pass
    return _micros(_monotonic() - run[4])


def _micros(seconds: float) -> float:
    """``seconds`` to the microsecond: ``round(seconds, 6)`` at a tenth of its cost."""
    return int(seconds * 1e6 + 0.5) / 1e6
