"""Fixed log-scale duration buckets: the histogram every rollup, chart and metric shares.

A duration (queue wait, run time) is counted in the first bucket whose upper
bound it does not exceed, as Prometheus's ``le`` does. The bounds grow by a
factor of √2 from 1 ms: every other bound is a power of two of milliseconds
(1, 2, 4, ... ms), the ones between are those times √2. Why √2:

- a percentile read from the counts is off by at most its bucket's width,
  which is 41 % of the bucket's lower bound (``p95 = 2.4 s`` means "between
  2.05 s and 2.9 s"); a factor of 2 would allow 100 %, one of 1.2 would need
  90 buckets to reach six hours;
- 50 finite bounds reach 6.6 hours (a long task's run, a long queue wait)
  with 51 counts a row, the size the rollup rows can afford;
- taking every other bound gives Prometheus factor-2 buckets (26 series a
  histogram) that are exactly a subset of these: the cumulative counts are
  the same numbers, not an approximation.

:data:`BOUNDS` is persisted: rollup rows store one count per bucket, in this
order, and :data:`LAYOUT` names it. Changing a bound is a schema change: it
needs a migration and a new :data:`LAYOUT`, never an edit in place.

Core layer: the standard library only.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

LAYOUT: Final = "sqrt2-1ms-51"
"""The name of this bucket layout, stored beside the counts so a change is seen."""

FINITE: Final[tuple[float, ...]] = tuple(
    0.001 * 2 ** (k // 2) * (math.sqrt(2) if k % 2 else 1.0) for k in range(50)
)
"""The 50 finite upper bounds in seconds, 1 ms to 6.59 h.

Computed with one power of two and one correctly rounded square root each, so
every IEEE-754 platform gets the very same floats (a test pins them).
"""

BOUNDS: Final[tuple[float, ...]] = (*FINITE, math.inf)
"""Every bucket's upper bound: :data:`FINITE` and ``inf``, the bucket of what is longer."""

COUNT: Final = len(BOUNDS)
"""How many counts a histogram has: 51."""

MAX_COUNT: Final = 2**63 - 1
"""The largest count stored (SQLite's integer); a decoded count above it is bad text."""


def index(seconds: float | None) -> int | None:
    """The bucket ``seconds`` falls in, or ``None`` when it is not a duration at all.

    Negative durations count in bucket 0: they come from clocks a few
    milliseconds apart (a ``sent`` stamped after its ``started``), so the true
    value is about zero. ``None``, NaN and infinities are not measured
    durations: ``None`` says "do not count", and the type makes the caller
    look (an index of ``-1`` would silently count in the last bucket).
    """
    if seconds is None or not math.isfinite(seconds):
        return None
    return bisect_left(FINITE, seconds)


def lower(bucket: int) -> float:
    """The bucket's lower bound (exclusive): 0 for the first bucket."""
    return 0.0 if bucket == 0 else BOUNDS[bucket - 1]


def histogram(samples: Iterable[float | None]) -> list[int]:
    """The counts of ``samples``, those that are not durations (see :func:`index`) left out."""
    counts = [0] * COUNT
    for sample in samples:
        bucket = index(sample)
        if bucket is not None:
            counts[bucket] += 1
    return counts


def merge(*vectors: Sequence[int]) -> list[int]:
    """The counts of all ``vectors`` together, as :data:`COUNT` numbers.

    Folding minutes into hours is this sum. A shorter vector counts as padded
    with zeros; a longer one was made for another layout and is refused.
    """
    total = [0] * COUNT
    for vector in vectors:
        if len(vector) > COUNT:
            raise ValueError(f"a histogram has {COUNT} counts, not {len(vector)}")
        for bucket, count in enumerate(vector):
            total[bucket] += count
    return total


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) read from bucket counts; ``None`` when nothing was counted.

    The rank ``q * total`` is found in its bucket, then placed linearly between
    the bucket's bounds, as Prometheus's ``histogram_quantile`` does, so the
    pages and a Grafana panel on ``/metrics`` show the same p95. The result is
    within the bucket that holds the exact (nearest-rank) percentile: off by
    at most that bucket's width. A rank in the last bucket, past 6.6 hours,
    answers the last finite bound: all that is known is "at least this".
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q is a quantile between 0 and 1, not {q!r}")
    total = sum(count for count in counts if count > 0)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bucket, count in enumerate(counts):
        if count <= 0:
            continue
        if seen + count >= rank:
            if bucket >= len(FINITE):
                return FINITE[-1]
            low, high = lower(bucket), BOUNDS[bucket]
            share = min(max((rank - seen) / count, 0.0), 1.0)
            return low + (high - low) * share
        seen += count
    return None  # not reached: the last bucket counted brings ``seen`` to the total


def cumulative(counts: Sequence[int], every: int = 1) -> list[tuple[float, int]]:
    """Prometheus buckets: ``(le, how many were at most le)``, ending with ``(inf, total)``.

    ``every=2`` keeps every other bound (the powers of two of milliseconds),
    halving the series a histogram costs; the counts at the bounds kept are
    exact, since a cumulative count does not depend on the bounds left out.
    """
    if every < 1:
        raise ValueError(f"every is a step of at least 1, not {every}")
    if len(counts) > COUNT:
        raise ValueError(f"a histogram has {COUNT} counts, not {len(counts)}")
    out = []
    running = 0
    for bucket, bound in enumerate(FINITE):
        running += counts[bucket] if bucket < len(counts) else 0
        if bucket % every == 0:
            out.append((bound, running))
    out.append((math.inf, sum(counts)))
    return out


_ENTRY = re.compile(r"(0|[1-9][0-9]{0,2}):(0|[1-9][0-9]{0,18})", re.ASCII)
_MAX_TEXT = COUNT * 24


def encode(counts: Sequence[int]) -> str:
    """Counts as compact text for storage: ``"3:5,4:12,10:1"``, the empty buckets left out.

    Most rows count a few neighbouring buckets, so the sparse form is a few
    bytes where a full list would be 51 numbers. The form is canonical (bucket
    numbers increasing, no zeros), so equal counts always give equal text.
    """
    if len(counts) > COUNT:
        raise ValueError(f"a histogram has {COUNT} counts, not {len(counts)}")
    parts = []
    for bucket, count in enumerate(counts):
        if count < 0 or count > MAX_COUNT:
            raise ValueError(f"bucket {bucket} holds {count}: not a count")
        if count:
            parts.append(f"{bucket}:{count}")
    return ",".join(parts)


def decode(text: object) -> list[int]:
    """The :data:`COUNT` counts that :func:`encode` wrote; ``ValueError`` for anything else.

    Stored text is not trusted: a wrong type, an unknown bucket, a bucket
    twice or out of order, a negative or oversized count, stray spaces or
    non-ASCII digits are all refused with the same exception, never half read.
    """
    if not isinstance(text, str):
        raise ValueError(f"histogram text is a str, not {type(text).__name__}")
    counts = [0] * COUNT
    if not text:
        return counts
    if len(text) > _MAX_TEXT:
        raise ValueError(f"histogram text of {len(text)} characters is too long")
    previous = -1
    for part in text.split(","):
        entry = _ENTRY.fullmatch(part)
        if entry is None:
            raise ValueError(f"not a bucket:count entry: {part[:40]!r}")
        bucket, count = int(entry[1]), int(entry[2])
        if bucket >= COUNT or bucket <= previous:
            raise ValueError(f"bucket {bucket} is unknown or out of order")
        if count == 0 or count > MAX_COUNT:
            raise ValueError(f"bucket {bucket} holds {count}: not a stored count")
        counts[bucket] = count
        previous = bucket
    return counts


_WIDTH = 8  # bytes a packed count takes: a signed 64-bit integer, little-endian


def trimmed(counts: Sequence[int]) -> list[int]:
    """Counts without their trailing empty buckets, as a histogram is stored."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return list(counts[:end])


def pack(counts: Sequence[int]) -> bytes:
    """Counts as one stored value (SQLite's ``rollup_hist.counts``): 64-bit little-endian
    integers, one per bucket, the trailing empty buckets left out (``b""``: none counted).

    A rollup cell keeps every bucket of one period in one row, so counting a
    batch updates a row per cell, not per bucket. ``ValueError`` for more than
    :data:`COUNT` counts, a negative one or one past :data:`MAX_COUNT`.
    """
    if len(counts) > COUNT:
        raise ValueError(f"a histogram has {COUNT} counts, not {len(counts)}")
    kept = trimmed(counts)
    for bucket, count in enumerate(kept):
        if not 0 <= count <= MAX_COUNT:
            raise ValueError(f"bucket {bucket} holds {count}: not a count")
    values = array("q", kept)
    if sys.byteorder == "big":  # pragma: no cover - the stored form is little-endian
        values.byteswap()
    return values.tobytes()


def unpack(value: object) -> list[int]:
    """The counts of a stored value: :func:`pack`'s bytes (SQLite) or a list of integers
    (PostgreSQL's ``bigint[]``); ``None`` is none. Up to :data:`COUNT` counts, the trailing
    empty ones left out. ``ValueError`` for anything else, never half read."""
    if value is None:
        return []
    if isinstance(value, list):
        if len(value) > COUNT or not all(type(n) is int and 0 <= n <= MAX_COUNT for n in value):
            raise ValueError(f"not a histogram of at most {COUNT} counts: {value[:4]!r}")
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"a stored histogram is bytes or a list, not {type(value).__name__}")
    data = bytes(value)
    if len(data) % _WIDTH or len(data) > COUNT * _WIDTH:
        raise ValueError(f"{len(data)} bytes are not a stored histogram")
    values = array("q")
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    counts = values.tolist()
    if any(n < 0 for n in counts):
        raise ValueError("a stored histogram holds a negative count")
    return counts


def add_into(total: list[int], value: object) -> None:
    """Add a stored value's counts (:func:`unpack`) to ``total``, :data:`COUNT` counts."""
    for bucket, count in enumerate(unpack(value)):
        total[bucket] += count


def add_packed(stored: object, more: object) -> bytes:
    """Two stored values added, as :func:`pack` stores them (SQLite's merge of a cell's
    counts on conflict); a count that would pass :data:`MAX_COUNT` stays at it."""
    a, b = unpack(stored), unpack(more)
    if len(a) < len(b):
        a, b = b, a
    total = list(a)
    for bucket, count in enumerate(b):
        total[bucket] = min(total[bucket] + count, MAX_COUNT)
    return pack(total)
