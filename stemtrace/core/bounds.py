"""Caps on untrusted JSON values: depth, items, string length and total size.

Whatever arrives on the stream was built by a process stemtrace does not
control. :func:`bound` walks a JSON value and cuts what is too deep, too long
or too big, with the same visible markers capture uses (``truncated``,
``more``, ``repr``), so that one event can neither exhaust the store nor make
a page recurse past Python's limit. A value within the caps comes back as the
very same object: the usual small value costs a walk, not a copy.

Core layer: the standard library only.
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeGuard

MARKER: Final = "__stemtrace__"
"""The key of a marker object: ``{"__stemtrace__": "truncated", ...}``."""
MORE_KEY: Final = "__stemtrace_more__"
"""The key under which a cut mapping says how many entries were left out."""

MAX_DEPTH: Final = 16
MAX_ITEMS: Final = 1000
MAX_STRING: Final = 16_384
MAX_SIZE: Final = 262_144
"""Characters a whole value may take (about its JSON length)."""


def bound(
    value: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    max_string: int = MAX_STRING,
    max_size: int = MAX_SIZE,
) -> Any:
    """``value`` within the caps; the same object when nothing had to be cut."""
    walker = _Walker(max_depth, max_items, max_string, max_size)
    return walker.walk(value, 0)


def cut_text(text: str, limit: int) -> str:
    """Text of at most about ``limit`` characters, head and tail kept, the cut marked."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut by stemtrace ...]\n{text[-tail:]}"


def finite(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number JSON can hold (not a bool, NaN or infinite)."""
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))  # type: ignore[arg-type]


class _Walker:
    __slots__ = ("budget", "max_depth", "max_items", "max_string")

    def __init__(self, max_depth: int, max_items: int, max_string: int, max_size: int) -> None:
        self.max_depth = max_depth
        self.max_items = max_items
        self.max_string = max_string
        self.budget = max_size

    def walk(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            self.budget -= len(value) + 2
            if len(value) > self.max_string:
                return {MARKER: "truncated", "preview": value[: self.max_string],
                        "length": len(value)}  # fmt: skip
            return value
        if kind is int or kind is bool or value is None:
            self.budget -= 8
            return value
        if kind is float:
            self.budget -= 12
            return value if math.isfinite(value) else {MARKER: "repr", "type": "float",
                                                        "repr": repr(value)}  # fmt: skip
        if kind is list:
            return self._list(value, depth)
        if kind is dict:
            return self._dict(value, depth)
        return {MARKER: "repr", "type": kind.__name__, "repr": repr(value)[:200]}

    def _deep(self, value: list[Any] | dict[str, Any]) -> dict[str, Any]:
        self.budget -= 60
        return {MARKER: "truncated", "preview": "[nested too deep]" if type(value) is list
                else "{nested too deep}", "length": len(value)}  # fmt: skip

    def _list(self, value: list[Any], depth: int) -> Any:
        if depth >= self.max_depth:
            return self._deep(value)
        out: list[Any] | None = None
        for index, item in enumerate(value):
            if index >= self.max_items or self.budget < 0:
                out = out if out is not None else value[:index]
                out.append({MARKER: "more", "count": len(value) - index})
                return out
            self.budget -= 1
            shaped = self.walk(item, depth + 1)
            if out is not None:
                out.append(shaped)
            elif shaped is not item:
                out = value[:index]
                out.append(shaped)
        return value if out is None else out

    def _dict(self, value: dict[str, Any], depth: int) -> Any:
        if depth >= self.max_depth:
            return self._deep(value)
        out: dict[str, Any] | None = None
        for index, (key, item) in enumerate(value.items()):
            if index >= self.max_items or self.budget < 0:
                out = out if out is not None else dict(list(value.items())[:index])
                out[MORE_KEY] = {MARKER: "more", "count": len(value) - index}
                return out
            name = key if len(key) <= self.max_string else key[: self.max_string] + "…"
            self.budget -= len(name) + 4
            shaped = self.walk(item, depth + 1)
            if out is not None:
                out[name] = shaped
            elif shaped is not item or name is not key:
                out = dict(list(value.items())[:index])
                out[name] = shaped
        return value if out is None else out
