"""Turn task args, kwargs, results and exceptions into bounded, scrubbed JSON data.

Everything a task hands us is untrusted: it may not be JSON-serialisable, may
be huge, may hold secrets, and its ``__repr__`` may raise. :class:`Shaper`
walks a value once and returns plain JSON data:

* values that JSON cannot hold become a *marker* object
  ``{"__stemtrace__": "repr", "type": ..., "repr": ...}``;
* long strings, long containers, deep nesting and whole fields over the size
  cap are cut, and the cut is visible (``"truncated"`` / ``"more"`` markers);
* values under secret-looking keys, and positional args whose parameter name
  looks secret, become ``{"__stemtrace__": "scrubbed"}``; passwords in URLs
  (``scheme://user:secret@host``) are masked inside strings.

Shaping never raises: a failure anywhere yields a marker for that value.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from stemtrace.core.bounds import MARKER, MORE_KEY

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "MARKER",
    "MORE_KEY",
    "SCRUBBED",
    "Scrubber",
    "SecretKeys",
    "Shaper",
]

SCRUBBED: Final[dict[str, str]] = {MARKER: "scrubbed"}

DEFAULT_SECRET_KEYS: Final = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "authorization",
    "cookie",
    "session",
    "credential",
    "passphrase",
    "credit_card",
    "card_number",
    "cvv",
    "cvc",
    "ssn",
    "pin",
)

Scrubber = Callable[[str, Any], Any]
"""A user hook: ``scrubber(field, value) -> value``, called on each shaped field
(``args``, ``kwargs``, ``result``, ``exc_message``) after the built-in rules."""

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SCALARS: Final = (str, int, float, bool, type(None))


def _compact(key: str) -> str:
    return _TOKEN_SPLIT.sub("", key.lower())


class SecretKeys:
    """Decides whether a mapping key or parameter name names a secret.

    Long patterns (five letters or more once ``_``/``-`` are dropped) match
    anywhere in the key, so ``db_password`` and ``X-Api-Key`` are caught.
    Short ones (``ssn``, ``cvv``, ``pin``, ``pwd``) must be a whole word of the
    key, so ``classname`` and ``spinner`` are not.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        compact = {_compact(p) for p in patterns if _compact(p)}
        self._long = tuple(sorted(p for p in compact if len(p) >= 5))
        self._short = frozenset(p for p in compact if len(p) < 5)
        self._cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        hit = self._cache.get(key)
        if hit is None:
            hit = self._match(key)
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit

    def _match(self, key: str) -> bool:
        compact = _compact(key)
        if any(p in compact for p in self._long):
            return True
        words = _TOKEN_SPLIT.split(_CAMEL.sub("_", key).lower())
        return compact in self._short or any(w in self._short for w in words)


class Shaper:
    """Shapes untrusted values into bounded JSON data; see the module docstring."""

    def __init__(
        self,
        *,
        max_field_size: int = 8192,
        max_string: int = 2048,
        max_items: int = 100,
        max_depth: int = 8,
        scrub: bool = True,
        secret_keys: Iterable[str] = (),
        scrubber: Scrubber | None = None,
    ) -> None:
        self.max_field_size = max_field_size
        self.max_string = max_string
        self.max_items = max_items
        self.max_depth = max_depth
        self.scrub = scrub
        self.is_secret = SecretKeys((*DEFAULT_SECRET_KEYS, *secret_keys))
        self.scrubber = scrubber
        self._repr = reprlib.Repr()
        self._repr.maxstring = self._repr.maxother = min(max_string, 400)

    # -- public entry points -------------------------------------------------

    def call(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], params: Sequence[str] = ()
    ) -> tuple[Any, Any]:
        """Shape a call's args and kwargs; ``params`` name the positional args."""
        if not args:
            shaped_args: Any = []
        elif self.scrub and params:
            shaped_args = self._field(
                "args",
                [
                    SCRUBBED if i < len(params) and self.is_secret(params[i]) else arg
                    for i, arg in enumerate(args)
                ],
            )
        else:
            shaped_args = self._field("args", args)
        shaped_kwargs: Any = self._field("kwargs", kwargs) if kwargs else {}
        return shaped_args, shaped_kwargs

    def value(self, field: str, value: Any) -> Any:
        """Shape one field (a result, say)."""
        if value is None and self.scrubber is None:  # most tasks return nothing
            return None
        return self._field(field, value)

    def text(self, field: str, value: object, limit: int) -> str:
        """A credential-masked string of at most about ``limit`` characters.

        Long text keeps its head and its tail (the end of a traceback is where
        the error is) with the cut marked in between.
        """
        text = _safe_str(value)
        if self.scrub and "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(r"\g<head>***@", text)
        if len(text) > limit:
            head = limit // 4
            tail = limit - head
            cut = len(text) - head - tail
            text = f"{text[:head]}\n[... {cut} characters cut by stemtrace ...]\n{text[-tail:]}"
        if self.scrubber is not None:
            try:
                text = _safe_str(self.scrubber(field, text))
            except Exception:
                return "[scrubber failed]"
        return text

    # -- internals -----------------------------------------------------------

    def _field(self, field: str, value: Any) -> Any:
        try:
            budget = [self.max_field_size]
            shaped = self._walk(value, 0, budget)
            if budget[0] < 0:
                shaped = self._cut_field(shaped)
            if self.scrubber is not None:
                shaped = self.scrubber(field, shaped)
            return shaped
        except Exception as exc:  # never let shaping fail a task
            return {MARKER: "error", "error": _safe_str(exc)[:200]}

    def _walk(self, value: Any, depth: int, budget: list[int]) -> Any:
        kind = type(value)
        if kind is str:
            return self._string(value, budget)
        if kind is int or kind is bool or value is None:
            budget[0] -= 8
            return value
        if kind is float:
            budget[0] -= 12
            return value if math.isfinite(value) else self._as_repr(value, budget)
        if depth >= self.max_depth:
            return self._as_repr(value, budget)
        if isinstance(value, Mapping):
            return self._mapping(value, depth, budget)
        if isinstance(value, list | tuple | set | frozenset):
            return self._sequence(value, depth, budget)
        if isinstance(value, str):  # str subclasses
            return self._string(str(value), budget)
        if isinstance(value, int | float):  # int/float subclasses, enums
            return self._as_repr(value, budget)
        return self._as_repr(value, budget)

    def _string(self, value: str, budget: list[int]) -> Any:
        if self.scrub and "://" in value and "@" in value:
            value = _URL_PASSWORD.sub(r"\g<head>***@", value)
        budget[0] -= len(value) + 2
        if len(value) <= self.max_string:
            return value
        return {MARKER: "truncated", "preview": value[: self.max_string], "length": len(value)}

    def _mapping(self, value: Mapping[Any, Any], depth: int, budget: list[int]) -> Any:
        out: dict[str, Any] = {}
        for count, (key, item) in enumerate(value.items()):
            if count >= self.max_items:
                out[MORE_KEY] = {MARKER: "more", "count": len(value) - count}
                break
            name = key if isinstance(key, str) else _safe_repr(self._repr, key)
            budget[0] -= len(name) + 4
            if self.scrub and self.is_secret(name):
                out[name] = SCRUBBED
            else:
                out[name] = self._walk(item, depth + 1, budget)
            if budget[0] < 0:
                break
        return out

    def _sequence(self, value: Iterable[Any], depth: int, budget: list[int]) -> Any:
        out: list[Any] = []
        items = list(value) if not isinstance(value, list | tuple) else value
        for count, item in enumerate(items):
            if count >= self.max_items:
                out.append({MARKER: "more", "count": len(items) - count})
                break
            out.append(self._walk(item, depth + 1, budget))
            if budget[0] < 0:
                break
        return out

    def _as_repr(self, value: Any, budget: list[int]) -> Any:
        text = _safe_repr(self._repr, value)
        if self.scrub and "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(r"\g<head>***@", text)
        budget[0] -= len(text) + 40
        return {MARKER: "repr", "type": _type_name(value), "repr": text}

    def _cut_field(self, shaped: Any) -> Any:
        import json  # only on the slow path

        text = json.dumps(shaped, ensure_ascii=False, default=str)
        if len(text) <= self.max_field_size:
            return shaped
        preview = text[: max(self.max_field_size - 100, 64)]
        return {MARKER: "truncated", "preview": preview, "length": len(text)}


def _type_name(value: object) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "")
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"


def _safe_repr(shortener: reprlib.Repr, value: object) -> str:
    try:
        return shortener.repr(value)
    except Exception as exc:
        return f"<unrepresentable {_type_name(value)}: {_type_name(exc)}>"


def _safe_str(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as exc:
        return f"<unprintable {_type_name(value)}: {_type_name(exc)}>"
