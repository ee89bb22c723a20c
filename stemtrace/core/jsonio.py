"""JSON on the hot paths: orjson where it is exact, the standard library otherwise.

orjson parses and writes several times faster than :mod:`json`, but reads an
integer beyond 64 bits as an imprecise float, and refuses what :mod:`json`
accepts (a lone surrogate, ``NaN``, a number beyond double range). So
:func:`loads` hands text with a run of 20 or more digits, and anything orjson
refuses, to :mod:`json`; :func:`dumps` does the same for values orjson cannot
write. Results are the same as with :mod:`json` alone, only faster.
:func:`encode` never fails on text: a lone surrogate, which UTF-8 cannot hold,
becomes ``?``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Digits to b"0", every other byte to b" ": a run of 20 zeros after translation
# is a number orjson might not hold exactly (2**64 has 20 digits).
_DIGIT_RUNS = bytes(48 if chr(i).isdigit() and i < 128 else 32 for i in range(256))
_LONG_RUN = b"0" * 20

_std_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr).encode


def loads(data: bytes | str) -> Any:
    """Parse JSON exactly as :func:`json.loads` would; raises :class:`ValueError` like it."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_RUN not in raw.translate(_DIGIT_RUNS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # maybe JSON only the standard library accepts; it explains if not
    return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``, non-ASCII kept; ``repr`` for what JSON cannot hold."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: a big integer, a surrogate, an unknown type
        return _std_dumps(value)


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``, as :func:`dumps`; a lone surrogate becomes ``?``."""
    try:
        return orjson.dumps(value, default=repr)
    except TypeError:
        return _std_dumps(value).encode("utf-8", "replace")
