"""Describe a Celery app's task definitions for the task registry."""

from __future__ import annotations

import inspect
from typing import Any


def positional_params(task: Any) -> tuple[str, ...]:
    """Names of the parameters a task's positional args bind to (``self`` excluded)."""
    try:
        signature = inspect.signature(task.run)
    except (TypeError, ValueError, AttributeError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in signature.parameters.values() if p.kind in kinds)


def describe_task(task: Any, default_queue: str | None) -> dict[str, Any]:
    """The registry entry of one task: where it lives, how it is called and retried."""
    run = getattr(task, "run", None)
    try:
        signature = _format_signature(inspect.signature(run)) if run is not None else None
    except (TypeError, ValueError):
        signature = None
    autoretry = getattr(task, "autoretry_for", ()) or ()
    return {
        "name": task.name,
        "module": getattr(run, "__module__", None) or getattr(task, "__module__", None),
        "signature": signature,
        "queue": getattr(task, "queue", None) or default_queue,
        "max_retries": _plain(getattr(task, "max_retries", None)),
        "default_retry_delay": _plain(getattr(task, "default_retry_delay", None)),
        "autoretry_for": [getattr(e, "__name__", str(e)) for e in autoretry],
        "retry_backoff": _plain(getattr(task, "retry_backoff", None)),
        "rate_limit": _plain(getattr(task, "rate_limit", None)),
        "time_limit": _plain(getattr(task, "time_limit", None)),
        "soft_time_limit": _plain(getattr(task, "soft_time_limit", None)),
        "acks_late": _plain(getattr(task, "acks_late", None)),
        "ignore_result": _plain(getattr(task, "ignore_result", None)),
    }


def describe_tasks(app: Any) -> list[dict[str, Any]]:
    """Every user task of ``app`` (Celery's own ``celery.*`` tasks left out), by name."""
    default_queue = getattr(app.conf, "task_default_queue", None)
    return [
        describe_task(task, default_queue)
        for name, task in sorted(app.tasks.items())
        if not name.startswith("celery.")
    ]


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
