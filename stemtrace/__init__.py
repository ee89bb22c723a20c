"""stemtrace: Celery task-flow observability.

``from stemtrace import init; init(app)`` in the process that sends tasks and in
every worker; ``stemtrace.trace()`` and :class:`TraceMiddleware` tie tasks to
the request that set them off.

Layers, each importing only those above it in this list (a test enforces it):

* ``stemtrace.core.events`` - the core model: event kinds and wire format; stdlib only.
* ``stemtrace.transports`` - senders per URL scheme (Redis Streams, memory).
* ``stemtrace.capture`` - runs inside Celery processes: signals, payload
  shaping, trace context, the publisher. Never imports the web stack or store.
* store, consumer, server and cli come on top of these.

Importing this package is cheap: ``init`` (which imports Celery's signals) and
the middleware load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemtrace.capture.context import current_trace_id, trace

__version__ = "0.1.0"

__all__ = ["TraceMiddleware", "__version__", "current_trace_id", "init", "trace"]

if TYPE_CHECKING:
    from stemtrace.capture.middleware import TraceMiddleware
    from stemtrace.capture.signals import init


def __getattr__(name: str) -> Any:
    if name == "init":
        from stemtrace.capture.signals import init

        return init
    if name == "TraceMiddleware":
        from stemtrace.capture.middleware import TraceMiddleware

        return TraceMiddleware
    raise AttributeError(f"module 'stemtrace' has no attribute {name!r}")
