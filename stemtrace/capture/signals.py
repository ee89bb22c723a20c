"""Celery signal receivers that turn each task transition into an event.

``init(app)`` makes a :class:`Capture` for the app and connects the receivers
(once per process, by ``dispatch_uid``, held strongly). Every receiver body
runs under :func:`_guard`, so an error in stemtrace is logged once and never
reaches the task, the publisher or the worker.

Where each signal fires (prefork): ``before_task_publish`` in whichever
process sends; ``task_received``, ``task_revoked``, ``task_rejected``,
``task_unknown``, ``worker_ready`` and ``worker_shutdown`` in the worker's main
process; ``task_prerun``/``success``/``failure``/``retry`` in the pool
child that runs the task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from celery import signals

from stemtrace.capture import dispatch
from stemtrace.capture.config import CaptureConfig
from stemtrace.capture.context import (
    TRACE_HEADER,
    current_trace_id,
    reset_trace_id,
    set_trace_id,
    valid_trace_id,
)
from stemtrace.capture.payload import Shaper
from stemtrace.capture.publisher import Publisher
from stemtrace.capture.registry import describe_tasks, positional_params
from stemtrace.core import coerce
from stemtrace.core import events as ev
from stemtrace.transports import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    describe_url,
    is_supported,
    open_sender,
    scheme_of,
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
            signum=coerce.count(signum),
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
        self.publisher.on_tick = lambda: self.heartbeat(hostname)

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
        self.publisher.on_tick = None
        self.emit(ev.WORKER_OFFLINE, hostname, worker=hostname, dropped=self.publisher.dropped)
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


# -- registry of captures, one per app -------------------------------------------

# Keyed by ``id(app)``: a plain dict look-up on every signal (a
# WeakKeyDictionary makes a weak reference per look-up). Each capture holds its
# app, so an id cannot be reused while its entry is here.
_captures: dict[int, Capture] = {}
_connect_lock = threading.Lock()
_connected = False
_warned_errors = False


def init(app: Any, **options: Any) -> Capture | None:
    """Capture every task of ``app``: call once where tasks are sent and in every worker.

    Options (each also read from ``STEMTRACE_<NAME>``) are the fields of
    :class:`~stemtrace.capture.config.CaptureConfig`. Returns the app's
    :class:`Capture` (its ``publisher.stats()`` shows sent and dropped
    counts), or ``None`` when capture is disabled.
    """
    config = CaptureConfig.build(options)
    old = _captures.pop(id(app), None)
    if old is not None:
        old.publisher.close(0.5)
    if not config.enabled:
        return None
    transport_url = config.transport_url or _broker_url(app)
    if not transport_url or not is_supported(transport_url):
        scheme = scheme_of(transport_url) if transport_url else "none"
        raise ValueError(
            f"stemtrace: the app's broker ({scheme}://) is not one stemtrace publishes to; "
            "pass transport_url='redis://host:6379/0' or 'amqp://...' "
            "(or set STEMTRACE_TRANSPORT_URL)"
        )
    capture = Capture(app, config, transport_url)
    _captures[id(app)] = capture
    _connect_receivers()
    return capture


def capture_for(app: Any) -> Capture | None:
    return _captures.get(id(app))


def _broker_url(app: Any) -> str | None:
    url = app.conf.broker_url or app.conf.broker_write_url
    if isinstance(url, str | list | tuple) and url:
        first = url.split(";")[0] if isinstance(url, str) else url[0]
        if scheme_of(first) in REDIS_SCHEMES | AMQP_SCHEMES:
            return str(first)
    return None


def _for_task(task: Any) -> Capture | None:
    return _captures.get(id(task.app)) if task is not None else None


def _for_sender(sender: Any) -> Capture | None:
    """The capture of a worker-side sender (consumer, worker): its ``app``."""
    return _captures.get(id(getattr(sender, "app", None)))


def _for_name(name: Any) -> Capture | None:
    """The capture of the app sending task ``name``.

    ``before_task_publish`` names the task but not the app. With one app (the
    usual case) that is enough; with several, the app whose registry has the
    task wins, the current app first, then the most recently initialised.
    """
    captures = list(_captures.values())
    if len(captures) <= 1:
        return captures[0] if captures else None
    candidates = [c for c in captures if name in c.app.tasks] or captures
    from celery import current_app

    current = current_app._get_current_object()
    for capture in candidates:
        if capture.app is current:
            return capture
    return candidates[-1]


def _capture_failed() -> None:
    """Log the exception being handled: the first as a warning, later ones at debug level."""
    global _warned_errors
    if not _warned_errors:
        _warned_errors = True
        logger.warning("stemtrace: capture error (tasks are unaffected)", exc_info=True)
    else:
        logger.debug("stemtrace: capture error", exc_info=True)


def _guard(handler: Callable[..., None]) -> Callable[..., None]:
    """Run a receiver so that nothing it does can raise into Celery.

    The handlers of the four signals every task sends (publish, received,
    prerun, success) catch for themselves instead.
    """

    def receiver(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception:
            _capture_failed()

    receiver.__name__ = receiver.__qualname__ = handler.__name__
    return receiver


# The four signals every task sends are handled as ``handler(sender, named)``
# (see :mod:`.dispatch`), each catching for itself: that saves a call and
# copying the arguments, on the path every task takes.


def _on_publish(sender: Any, named: dict[str, Any]) -> None:
    try:
        capture = _for_name(sender)
        headers = named.get("headers")
        if capture is not None and isinstance(headers, dict):
            capture.on_publish(
                named.get("body"),
                headers,
                named.get("exchange"),
                named.get("routing_key"),
                named.get("declare"),
            )
    except Exception:
        _capture_failed()


def _on_received(sender: Any, named: dict[str, Any]) -> None:
    try:
        capture = _for_sender(sender)
        request = named.get("request")
        if capture is not None and request is not None:
            capture.on_received(request)
    except Exception:
        _capture_failed()


def _on_prerun(sender: Any, named: dict[str, Any]) -> None:
    try:
        task = named.get("task")
        task_id = named.get("task_id")
        capture = _for_task(task)
        if capture is not None and isinstance(task_id, str):
            capture.on_prerun(task_id, task, named.get("args"), named.get("kwargs"))
    except Exception:
        _capture_failed()


def _on_success(sender: Any, named: dict[str, Any]) -> None:
    try:
        capture = _for_task(sender)
        if capture is not None:
            capture.on_success(sender, named.get("result"), named.get("runtime"))
    except Exception:
        _capture_failed()


_before_task_publish = dispatch.receiver_for(_on_publish, "_before_task_publish")
_task_received = dispatch.receiver_for(_on_received, "_task_received")
_task_prerun = dispatch.receiver_for(_on_prerun, "_task_prerun")
_task_success = dispatch.receiver_for(_on_success, "_task_success")


@_guard
def _task_failure(
    sender: Any = None, task_id: Any = None, exception: Any = None, einfo: Any = None, **_: Any
) -> None:
    capture = _for_task(sender)
    if capture is not None and isinstance(task_id, str):
        capture.on_failure(sender, task_id, exception, einfo)


@_guard
def _task_retry(
    sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any
) -> None:
    capture = _for_task(sender)
    if capture is not None and request is not None:
        capture.on_retry(sender, request, reason, einfo)


@_guard
def _task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = None,
    signum: Any = None,
    expired: Any = None,
    **_: Any,
) -> None:
    capture = _for_task(sender)
    if capture is not None and request is not None:
        capture.on_revoked(sender, request, terminated, signum, expired)


@_guard
def _task_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    capture = _for_sender(sender)
    if capture is not None:
        capture.on_rejected(sender, message, f"rejected: {exc!r}" if exc else "rejected")


@_guard
def _task_unknown(sender: Any = None, message: Any = None, name: Any = None, **_: Any) -> None:
    capture = _for_sender(sender)
    if capture is not None:
        capture.on_rejected(sender, message, f"unknown task {name!r}: not registered in the worker")


@_guard
def _worker_ready(sender: Any = None, **_: Any) -> None:
    capture = _for_sender(sender)
    if capture is not None:
        capture.on_worker_ready(sender)


@_guard
def _worker_shutdown(sender: Any = None, **_: Any) -> None:
    capture = _for_sender(sender)
    if capture is not None:
        capture.on_worker_shutdown(sender)


@_guard
def _worker_process_shutdown(**_: Any) -> None:
    for capture in list(_captures.values()):
        capture.publisher.close(capture.config.shutdown_timeout)


_RECEIVERS: Iterable[tuple[Any, Callable[..., None]]] = (
    (signals.before_task_publish, _before_task_publish),
    (signals.task_received, _task_received),
    (signals.task_prerun, _task_prerun),
    (signals.task_success, _task_success),
    (signals.task_failure, _task_failure),
    (signals.task_retry, _task_retry),
    (signals.task_revoked, _task_revoked),
    (signals.task_rejected, _task_rejected),
    (signals.task_unknown, _task_unknown),
    (signals.worker_ready, _worker_ready),
    (signals.worker_shutdown, _worker_shutdown),
    (signals.worker_process_shutdown, _worker_process_shutdown),
)

# Sent for every task: their sends take the short cut of :mod:`.dispatch`
# while stemtrace's receiver is the only one connected.
_EVERY_TASK = (
    (signals.before_task_publish, _before_task_publish, _on_publish),
    (signals.task_received, _task_received, _on_received),
    (signals.task_prerun, _task_prerun, _on_prerun),
    (signals.task_success, _task_success, _on_success),
)


def _connect_receivers() -> None:
    global _connected
    with _connect_lock:
        if _connected:
            return
        for signal, receiver in _RECEIVERS:
            signal.connect(receiver, weak=False, dispatch_uid=f"stemtrace.{receiver.__name__}")
        for signal, receiver, handler in _EVERY_TASK:
            dispatch.install(signal, receiver, handler)
        _connected = True


# -- small converters ------------------------------------------------------------


def _split_body(body: Any) -> tuple[Any, Any, dict[str, Any]]:
    if isinstance(body, list | tuple) and len(body) == 3:
        args, kwargs, embed = body
        return args, kwargs, embed if isinstance(embed, dict) else {}
    return (), {}, {}


def _link(signature: Any) -> dict[str, Any]:
    if not isinstance(signature, dict):
        return {"id": None, "name": None}
    options = signature.get("options") or {}
    task_id = options.get("task_id") if isinstance(options, dict) else None
    name = signature.get("task")
    return {
        "id": task_id if isinstance(task_id, str) else None,
        "name": name if isinstance(name, str) else None,
    }


def _links(signatures: Iterable[Any]) -> list[dict[str, Any]]:
    return [_link(s) for s in signatures]


def _queue_name(declare: Any, routing_key: Any) -> str | None:
    for queue in declare or ():
        name = getattr(queue, "name", None)
        if isinstance(name, str) and name:
            return name
    return coerce.text_of(routing_key)


def _exchange_name(exchange: Any) -> str | None:
    name = getattr(exchange, "name", exchange)
    return name if isinstance(name, str) else None


def _fast_trace_id(value: Any) -> str | None:
    """A trace id from a message header, checked cheaply (hot path in every task)."""
    if type(value) is str and 0 < len(value) <= 128:
        return value
    return None


def _qualname(kind: type) -> str:
    module = getattr(kind, "__module__", "")
    return kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"


def _celery_version() -> str | None:
    import celery

    return getattr(celery, "__version__", None)
