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
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery import signals

from stemtrace.capture import dispatch
from stemtrace.capture.capture import Capture
from stemtrace.capture.config import CaptureConfig
from stemtrace.transports import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    is_supported,
    scheme_of,
)

logger = logging.getLogger("stemtrace")


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
