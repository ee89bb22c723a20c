"""Describe a Celery app's task definitions for the task registry.

An entry leaves the worker in its ``worker_online`` event, so it is scrubbed
like args are: defaults of secret-looking parameters never appear in it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from stemtrace.capture.payload import Shaper
from stemtrace.core import coerce

SCRUBBED_DEFAULT = "<scrubbed>"
"""What a signature shows in place of a secret-looking parameter's default."""


def positional_params(task: Any) -> tuple[str, ...]:
    """Names of the parameters a task's positional args bind to (``self`` excluded)."""
    try:
        signature = inspect.signature(task.run)
    except (TypeError, ValueError, AttributeError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in signature.parameters.values() if p.kind in kinds)


def describe_task(task: Any, default_queue: str | None, shaper: Shaper) -> dict[str, Any]:
    """The registry entry of one task: where it lives, how it is called and retried."""
    run = getattr(task, "run", None)
    return {
        "name": task.name,
        "module": getattr(run, "__module__", None) or getattr(task, "__module__", None),
        "signature": _signature(run, shaper),
        "queue": getattr(task, "queue", None) or default_queue,
        "max_retries": _plain(getattr(task, "max_retries", None)),
        "default_retry_delay": _plain(getattr(task, "default_retry_delay", None)),
        "autoretry_for": _names(getattr(task, "autoretry_for", ())),
        "retry_backoff": _plain(getattr(task, "retry_backoff", None)),
        "retry_policy": retry_policy(task),
        "rate_limit": _plain(getattr(task, "rate_limit", None)),
        "time_limit": _plain(getattr(task, "time_limit", None)),
        "soft_time_limit": _plain(getattr(task, "soft_time_limit", None)),
        "acks_late": _plain(getattr(task, "acks_late", None)),
        "ignore_result": _plain(getattr(task, "ignore_result", None)),
    }


def describe_tasks(app: Any, shaper: Shaper) -> list[dict[str, Any]]:
    """Every user task of ``app`` (Celery's own ``celery.*`` tasks left out), by name."""
    default_queue = getattr(app.conf, "task_default_queue", None)
    return [
        describe_task(task, default_queue, shaper)
        for name, task in sorted(app.tasks.items())
        if not name.startswith("celery.")
    ]


def retry_policy(task: Any) -> dict[str, Any]:
    """The retries Celery makes of the task, as ``celery.app.autoretry`` reads them.

    Without ``autoretry_for``, what ``self.retry()`` uses: ``max_retries`` and
    ``default_retry_delay``. With it, ``retry_kwargs`` may set both; a truthy
    ``retry_backoff`` replaces the countdown by ``factor * 2 ** retries`` seconds,
    at most ``retry_backoff_max``, drawn between 0 and that with ``retry_jitter``.
    ``backoff`` is the factor (an int, as Celery takes it), ``None`` when off.
    """
    max_retries = getattr(task, "max_retries", None)
    countdown = getattr(task, "default_retry_delay", None)
    autoretry_for = _names(getattr(task, "autoretry_for", ()))
    dont_autoretry_for: list[str] = []
    backoff: int | None = None
    backoff_max: int | None = None
    jitter: bool | None = None
    if autoretry_for:
        retry_kwargs = getattr(task, "retry_kwargs", None)
        if not isinstance(retry_kwargs, Mapping):  # one odd task must not lose the registry
            retry_kwargs = {}
        if retry_kwargs.get("max_retries") is not None:
            max_retries = retry_kwargs["max_retries"]
        if retry_kwargs.get("countdown") is not None:
            countdown = retry_kwargs["countdown"]
        elif retry_kwargs.get("eta") is not None:
            countdown = None
        dont_autoretry_for = _names(getattr(task, "dont_autoretry_for", ()))
        try:
            factor = float(getattr(task, "retry_backoff", False) or 0)
            most = int(getattr(task, "retry_backoff_max", 600))
        except (TypeError, ValueError):
            factor, most = 0.0, 600
        if factor:
            countdown = None
            backoff, backoff_max = int(max(1.0, factor)), most
            jitter = bool(getattr(task, "retry_jitter", True))
    return {
        "max_retries": coerce.number(max_retries),
        "countdown": coerce.number(countdown),
        "backoff": backoff,
        "backoff_max": backoff_max,
        "jitter": jitter,
        "autoretry_for": autoretry_for,
        "dont_autoretry_for": dont_autoretry_for,
    }


def _names(exceptions: Any) -> list[str]:
    try:
        return [getattr(e, "__name__", str(e)) for e in exceptions or ()]
    except TypeError:  # a single class where Celery wants a tuple
        return [getattr(exceptions, "__name__", str(exceptions))]


def _signature(run: Any, shaper: Shaper) -> str | None:
    """The signature as text; a secret-looking parameter's default scrubbed, like args."""
    if run is None:
        return None
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):
        return None
    if shaper.scrub:
        params = [
            p.replace(default=_Source(SCRUBBED_DEFAULT))
            if p.default is not p.empty and shaper.is_secret(p.name)
            else p
            for p in signature.parameters.values()
        ]
        signature = signature.replace(parameters=params)
    return shaper.text("signature", _format_signature(signature), shaper.max_string)


class _Source:
    """An annotation kept as source text (``from __future__ import annotations``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _format_signature(signature: inspect.Signature) -> str:
    def unquote(annotation: Any) -> Any:
        return _Source(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=unquote(p.annotation)) for p in signature.parameters.values()]
    return str(
        signature.replace(parameters=params, return_annotation=unquote(signature.return_annotation))
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
