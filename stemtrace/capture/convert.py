"""Celery's values (message bodies, signatures, exchanges) as event fields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stemtrace.core import coerce


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
