"""The versioned wire format of stemtrace events, and its validation.

Capture code builds plain dicts and hands batches of them to a transport as
*frames*: ``{"v": 1, "events": [...]}`` encoded as compact JSON. Readers call
:func:`decode_frame`, which keeps every valid event and reports each invalid
one with a reason, so a consumer can skip and count malformed input instead
of failing on it. ``docs/events.md`` documents every field; keep the two in
step (a test checks that each field below is documented).

This module is the core model: it imports nothing but the standard library
and :mod:`stemtrace.core.jsonio` (orjson, exact), :mod:`stemtrace.core.bounds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stemtrace.core.bounds import MAX_SIZE, bound, cut_text, finite
from stemtrace.core.jsonio import encode as json_encode
from stemtrace.core.jsonio import loads as json_loads

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
    rejected: list[tuple[int, str, object]] = field(default_factory=list)
    """Per skipped event: its position in the frame, why, and the event as sent."""

    @property
    def errors(self) -> list[str]:
        return [f"event {position}: {reason}" for position, reason, _ in self.rejected]


def encode_frame(events: list[Event]) -> bytes:
    """Encode a batch of events as one frame (compact JSON, UTF-8).

    What JSON cannot hold is written as its ``repr`` (capture shapes values
    before they get here), ``NaN`` as ``null``, a lone surrogate as ``?``.
    """
    return json_encode({"v": FORMAT_VERSION, "events": events})


def decode_frame(data: bytes | str, now: float | None = None) -> DecodedFrame:
    """Decode one frame; invalid events are dropped and explained, not raised.

    Valid events are also bounded (:func:`bound_event`) against ``now``, the
    time of ingest.

    Raises :class:`FrameError` when the frame as a whole is unreadable.
    """
    try:
        obj = json_loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise FrameError("frame is not JSON this reader can hold: nested too deep") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    version = obj.get("v")
    if type(version) is not int or version != FORMAT_VERSION:  # not True, not 1.0
        raise FrameError(f"unsupported frame version {version!r} (expected {FORMAT_VERSION})")
    events = obj.get("events")
    if not isinstance(events, list):
        raise FrameError("frame has no 'events' list")
    decoded = DecodedFrame()
    now = time.time() if now is None else now
    for position, candidate in enumerate(events):
        problem = validate_event(candidate)
        if problem is None:
            problem = bound_event(candidate, now)
        if problem is None:
            decoded.events.append(candidate)
        else:
            decoded.rejected.append((position, problem, candidate))
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


# -- bounds: what a valid event may hold --------------------------------------

MIN_TS: Final = 946_684_800.0
"""2000-01-01: no Celery event is older; a smaller ``ts`` is a broken clock or a unit error."""
MAX_AHEAD: Final = 86_400.0
"""How far ahead of the time of ingest a ``ts`` may be: a day of clock skew, no more."""
MAX_ID: Final = 255
"""Characters of an id (task, parent, group, trace, event, host): the API's path limit."""
MAX_NAME: Final = 1000
"""Characters of a name (task, queue, exchange, exception type, version ...)."""
MAX_TEXT: Final = 65_536
"""Characters of free text (exception message, traceback, reason): head and tail kept."""
MAX_LINKS: Final = 10_000
"""Links in a ``chain``, ``callbacks`` or ``errbacks`` list."""
_INT64: Final = 2**63

# Which string fields are ids or names: printable, bounded, else the event is skipped.
ID_FIELDS: Final = ("eid", "task_id", "host", "parent_id", "root_id", "group_id", "chord_id",
                    "trace_id", "worker")  # fmt: skip
NAME_FIELDS: Final = ("name", "chord_name", "queue", "exchange", "routing_key",
                      "exc_type", "sw_ver", "pool", "source", "eta", "expires")  # fmt: skip
TEXT_FIELDS: Final = ("exc_message", "traceback", "reason")
VALUE_FIELDS: Final = ("args", "kwargs", "result")
_OPTIONAL_INTS: Final = ("group_index", "retries", "attempt", "signum", "concurrency", "active",
                         "processed", "dropped")  # fmt: skip


def bound_event(event: Event, now: float) -> str | None:
    """Hold a type-valid event to the bounds above; why it must be skipped, or ``None``.

    Skipped (the reason returned): a ``ts`` that is not finite or lies outside
    [:data:`MIN_TS`, ``now`` + :data:`MAX_AHEAD`]; an id or name that is not
    printable text within its length; a ``pid`` beyond 64 bits; a link list over
    :data:`MAX_LINKS`. Cut in place, the event kept: args, kwargs, result and the
    registry (:func:`stemtrace.core.bounds.bound`), free text (head and tail), queues;
    an optional number that is not finite or beyond 64 bits becomes ``None``.
    """
    ts = event["ts"]
    if not finite(ts) or not MIN_TS <= ts <= now + MAX_AHEAD:
        return f"ts is not a time between 2000 and a day after ingest ({ts!r:.40})"
    if not -_INT64 <= event["pid"] < _INT64:
        return "pid is not a 64-bit integer"
    keys = tuple(event)
    plan = _plans.get(keys)
    if plan is None:
        if len(_plans) >= _MAX_SHAPES:
            _plans.clear()
        plan = _plans[keys] = tuple((n, _CHECKS[n]) for n in keys if n in _CHECKS)
    for name, check in plan:
        value = event[name]
        if value is None:
            continue
        if check is _ID:  # ids and names are most of an event: checked here, inline
            if len(value) > MAX_ID or not value.isprintable():
                return _bad_text(name, value, MAX_ID)
        elif check is _NAME:
            if len(value) > MAX_NAME or not value.isprintable():
                return _bad_text(name, value, MAX_NAME)
        elif (problem := _OTHER_CHECKS[check](event, name, value)) is not None:
            return problem
    return None


def _check_value(event: Event, name: str, value: Any) -> None:
    if type(value) in (list, dict, str, float):
        event[name] = _bound_value(value)


def _check_text(event: Event, name: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        event[name] = cut_text(value, MAX_TEXT)


def _check_int(event: Event, name: str, value: int) -> None:
    if not -_INT64 <= value < _INT64:
        event[name] = None


def _check_number(event: Event, name: str, value: float) -> None:
    if not (finite(value) and -1e12 < value < 1e12):
        event[name] = None


_ID, _NAME, _TEXT, _VALUE, _LINKS, _INT, _NUMBER, _WORKER = range(8)
_CHECKS: Final[dict[str, int]] = {
    **dict.fromkeys(ID_FIELDS, _ID),
    **dict.fromkeys(NAME_FIELDS, _NAME),
    **dict.fromkeys(TEXT_FIELDS, _TEXT),
    **dict.fromkeys(VALUE_FIELDS, _VALUE),
    **dict.fromkeys(("chain", "callbacks", "errbacks"), _LINKS),
    **dict.fromkeys(_OPTIONAL_INTS, _INT),
    **dict.fromkeys(("runtime", "retry_at", "freq"), _NUMBER),
    **dict.fromkeys(("queues", "tasks", "loadavg"), _WORKER),
}
_OTHER_CHECKS: Final[dict[int, Callable[[Event, str, Any], str | None]]] = {
    _VALUE: _check_value,
    _TEXT: _check_text,
    _INT: _check_int,
    _NUMBER: _check_number,
    _LINKS: lambda event, name, value: _bound_links(name, value),
    _WORKER: lambda event, name, value: _bound_worker_field(event, name, value),
}
# Which fields of an event (by its field names, in order) need which check.
_plans: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = {}


def _bound_value(value: Any) -> Any:
    """Args, kwargs or a result within :func:`stemtrace.core.bounds.bound`'s caps.

    The usual value is small and shallow: orjson writing it (in C) shows that,
    and only a value it refuses (nested past 255 levels, an integer beyond 64
    bits, a key that is not a string) or finds too long is walked.
    """
    if type(value) is float:
        return bound(value)
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        return bound(value)
    return value if size <= MAX_SIZE else bound(value)


def _bad_text(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        return f"field {name!r} is {len(value):,} characters long (at most {limit:,})"
    return f"field {name!r} holds control characters ({value[:60]!r})"


def _bound_links(name: str, links: list[dict[str, Any]]) -> str | None:
    if len(links) > MAX_LINKS:
        return f"field {name!r} holds {len(links):,} links (at most {MAX_LINKS:,})"
    for link in links:
        for key, limit in (("id", MAX_ID), ("name", MAX_NAME)):
            value = link[key]
            if value is not None and (len(value) > limit or not value.isprintable()):
                return f"field {name!r} holds a link whose {_bad_text(key, value, limit)}"
    return None


def _bound_worker_field(event: Event, name: str, value: list[Any]) -> None:
    if name == "queues":
        event[name] = [
            q for q in value[:MAX_ITEMS_WORKER]
            if type(q) is str and len(q) <= MAX_NAME and q.isprintable()
        ]  # fmt: skip
    elif name == "tasks":
        event[name] = bound(value, max_depth=4, max_items=10_000, max_size=16 * 2**20)
    elif not (len(value) <= 3 and all(map(finite, value))):  # loadavg
        event[name] = []


MAX_ITEMS_WORKER: Final = 1000
"""Queues a worker may name."""
