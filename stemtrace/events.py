"""The versioned wire format of stemtrace events, and its validation.

Capture code builds plain dicts and hands batches of them to a transport as
*frames*: ``{"v": 1, "events": [...]}`` encoded as compact JSON. Readers call
:func:`decode_frame`, which keeps every valid event and reports each invalid
one with a reason, so a consumer can skip and count malformed input instead
of failing on it. ``docs/events.md`` documents every field; keep the two in
step (a test checks that each field below is documented).

This module is the core model: it imports nothing but the standard library
and :mod:`stemtrace.jsonio` (orjson, exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from stemtrace.jsonio import encode as json_encode
from stemtrace.jsonio import loads as json_loads

FORMAT_VERSION: Final = 1

Event = dict[str, Any]

# Event kinds.
SENT: Final = "sent"
RECEIVED: Final = "received"
STARTED: Final = "started"
RETRY: Final = "retry"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
REVOKED: Final = "revoked"
REJECTED: Final = "rejected"
WORKER_ONLINE: Final = "worker_online"
WORKER_HEARTBEAT: Final = "worker_heartbeat"
WORKER_OFFLINE: Final = "worker_offline"

TASK_KINDS: Final = frozenset(
    {SENT, RECEIVED, STARTED, RETRY, SUCCEEDED, FAILED, REVOKED, REJECTED}
)
WORKER_KINDS: Final = frozenset({WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE})
KINDS: Final = TASK_KINDS | WORKER_KINDS

_STR = (str,)
_OPT_STR = (str, type(None))
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_INT = (int, type(None))
_BOOL = (bool,)
_LIST = (list,)
_ANY: tuple[type, ...] = ()  # any JSON value

# Fields every event carries: name -> accepted JSON types.
COMMON_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "kind": _STR,
    "eid": _STR,
    "ts": _NUM,
    "host": _STR,
    "pid": (int,),
}

# Fields every task event carries on top of the common ones.
TASK_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "task_id": _STR,
    "name": _OPT_STR,
}

# Optional fields, by the kinds that may carry them. A present field must have
# the listed type; a missing one is simply unknown.
OPTIONAL_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "trace_id": _OPT_STR,
    "parent_id": _OPT_STR,
    "root_id": _OPT_STR,
    "group_id": _OPT_STR,
    "group_index": _OPT_INT,
    "chord_id": _OPT_STR,
    "chord_name": _OPT_STR,
    "chain": _LIST,
    "callbacks": _LIST,
    "errbacks": _LIST,
    "eta": _OPT_STR,
    "expires": _OPT_STR,
    "queue": _OPT_STR,
    "exchange": _OPT_STR,
    "routing_key": _OPT_STR,
    "retries": _OPT_INT,
    "args": _ANY,
    "kwargs": _ANY,
    "instrumented": _BOOL,
    "result": _ANY,
    "runtime": _OPT_NUM,
    "attempt": _OPT_INT,
    "exc_type": _OPT_STR,
    "exc_message": _OPT_STR,
    "traceback": _OPT_STR,
    "retry_at": _OPT_NUM,
    "terminated": _BOOL,
    "expired": _BOOL,
    "signum": _OPT_INT,
    "reason": _OPT_STR,
    "worker": _OPT_STR,
    "sw_ver": _OPT_STR,
    "pool": _OPT_STR,
    "concurrency": _OPT_INT,
    "queues": _LIST,
    "tasks": _LIST,
    "active": _OPT_INT,
    "processed": _OPT_INT,
    "loadavg": _LIST,
    "freq": _OPT_NUM,
    "dropped": _OPT_INT,
    "source": _OPT_STR,
}

# A link (chain step, chord callback, link/errback) as stored in ``chain``,
# ``callbacks`` and ``errbacks``: its planned task id and task name.
LINK_FIELDS: Final[dict[str, tuple[type, ...]]] = {"id": _OPT_STR, "name": _OPT_STR}


class FrameError(ValueError):
    """A frame that cannot be read at all (not JSON, wrong version, wrong shape)."""


@dataclass
class DecodedFrame:
    """The valid events of one frame and the reasons the others were skipped."""

    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def encode_frame(events: list[Event]) -> bytes:
    """Encode a batch of events as one frame (compact JSON, UTF-8).

    What JSON cannot hold is written as its ``repr`` (capture shapes values
    before they get here), ``NaN`` as ``null``, a lone surrogate as ``?``.
    """
    return json_encode({"v": FORMAT_VERSION, "events": events})


def decode_frame(data: bytes | str) -> DecodedFrame:
    """Decode one frame; invalid events are dropped and explained, not raised.

    Raises :class:`FrameError` when the frame as a whole is unreadable.
    """
    try:
        obj = json_loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    version = obj.get("v")
    if version != FORMAT_VERSION:
        raise FrameError(f"unsupported frame version {version!r} (expected {FORMAT_VERSION})")
    events = obj.get("events")
    if not isinstance(events, list):
        raise FrameError("frame has no 'events' list")
    decoded = DecodedFrame()
    for position, candidate in enumerate(events):
        problem = validate_event(candidate)
        if problem is None:
            decoded.events.append(candidate)
        else:
            decoded.errors.append(f"event {position}: {problem}")
    return decoded


def validate_event(obj: object) -> str | None:
    """Return why ``obj`` is not a valid event, or ``None`` when it is.

    Events of one producer share a few shapes (the same fields, of the same
    types), so the type checks of a shape seen valid before are remembered;
    what depends on values (an empty task id, the links in a chain) is checked
    every time.
    """
    if type(obj) is not dict:
        return "not a JSON object"
    kind = obj.get("kind")
    if type(kind) is not str:
        return f"unknown kind {kind!r:.100}"
    shape = (kind, *obj, *map(type, obj.values()))
    plan = _valid_shapes.get(shape)
    if plan is None:
        if kind not in KINDS:
            return f"unknown kind {kind!r:.100}"
        problem = _check_types(obj, kind)
        if problem is not None:
            return problem
        if len(_valid_shapes) >= _MAX_SHAPES:
            _valid_shapes.clear()
        plan = _valid_shapes[shape] = (
            kind in TASK_KINDS,
            tuple(name for name in _LINK_LISTS if name in obj),
        )
    is_task, link_lists = plan
    if is_task and not obj["task_id"]:
        return "empty task_id"
    for name in link_lists:
        for link in obj[name]:
            if type(link) is not dict or _check_required(link, LINK_FIELDS) is not None:
                return f"field {name!r} holds a malformed link"
    return None


_LINK_LISTS = ("chain", "callbacks", "errbacks")

# Shapes (kind, then the field names and the types of their values, in order)
# whose types passed the checks: whether the kind is a task's, and which of the
# link lists the shape holds.
_valid_shapes: dict[tuple[Any, ...], tuple[bool, tuple[str, ...]]] = {}
_MAX_SHAPES = 4096


def _check_types(obj: dict[str, Any], kind: str) -> str | None:
    problem = _check_required(obj, COMMON_FIELDS)
    if problem is None and kind in TASK_KINDS:
        problem = _check_required(obj, TASK_FIELDS)
    if problem is not None:
        return problem
    optional = OPTIONAL_FIELDS
    for name, value in obj.items():
        types = optional.get(name)
        if types and not _is(value, types):
            return f"field {name!r} has type {type(value).__name__}"
    return None


def _check_required(obj: dict[str, Any], spec: dict[str, tuple[type, ...]]) -> str | None:
    for name, types in spec.items():
        if name not in obj:
            return f"missing field {name!r}"
        if not _is(obj[name], types):
            return f"field {name!r} has type {type(obj[name]).__name__}"
    return None


def _is(value: object, types: tuple[type, ...]) -> bool:
    # bool is an int subclass; a boolean where a number belongs is malformed.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)
