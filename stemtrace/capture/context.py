"""The current trace id, and how it is set: ``trace()`` and inside running tasks.

The id lives in a :class:`contextvars.ContextVar`, so it follows asyncio tasks
and threads started through ``contextvars.copy_context`` (Starlette runs sync
endpoints that way). Capture copies it into a message header of every task
sent while it is set; a worker sets it again from that header for the
duration of the task, so every descendant carries it.
"""

from __future__ import annotations

import functools
import inspect
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, ParamSpec, TypeVar

TRACE_HEADER: Final = "stemtrace_trace_id"
"""The Celery message header that carries the trace id to the worker."""

_current: ContextVar[str | None] = ContextVar("stemtrace_trace_id", default=None)

_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

P = ParamSpec("P")
R = TypeVar("R")


def new_trace_id() -> str:
    """A fresh random trace id (32 hex digits, the W3C trace-id shape)."""
    return uuid.uuid4().hex


def valid_trace_id(value: object) -> str | None:
    """``value`` if it is a usable trace id (1-128 safe characters), else ``None``."""
    if isinstance(value, str) and _VALID_ID.match(value):
        return value
    return None


def current_trace_id() -> str | None:
    """The trace id set for the code running now, if any."""
    return _current.get()


def set_trace_id(trace_id: str | None) -> Any:
    """Set the current trace id; returns a token for :func:`reset_trace_id`."""
    return _current.set(trace_id)


def reset_trace_id(token: Any) -> None:
    _current.reset(token)


class trace:
    """Set the trace id for every task sent inside; a context manager or decorator.

    ``with stemtrace.trace("checkout-42"):`` or ``@stemtrace.trace()``. With no
    id, a new one is made each time the block is entered. An invalid id (empty,
    over 128 characters, or with characters outside ``A-Za-z0-9._:@/+=-``)
    raises ``ValueError`` here rather than being sent on.
    """

    def __init__(self, trace_id: str | None = None) -> None:
        if trace_id is not None and valid_trace_id(trace_id) is None:
            raise ValueError(f"invalid trace id {trace_id!r}")
        self.trace_id = trace_id

    @contextmanager
    def _scope(self) -> Iterator[str]:
        trace_id = self.trace_id or new_trace_id()
        token = _current.set(trace_id)
        try:
            yield trace_id
        finally:
            _current.reset(token)

    def __enter__(self) -> str:
        self._active = self._scope()
        return self._active.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self._active.__exit__(*exc_info)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self._scope():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._scope():
                return func(*args, **kwargs)

        return wrapper
