"""The settled part of a chart's series, kept a while: long ranges stop re-reading it.

A 24-hour chart per 15 minutes sums some 70,000 rollup rows of minutes; almost
all of them are about steps that ended long ago and will not change (an event
arriving over an hour late is rare). :class:`Settled` keeps, per store, series
(dimension, key) and step, the points of steps that ended more than
:data:`SETTLED` seconds ago, for :data:`KEEP` seconds; each request reads
only the steps after that, and the settled steps it does not hold yet.
So a chart is exact for its last hour at once, and for older steps within
:data:`KEEP` seconds of a late event.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from stemtrace.store import Backend

SETTLED: Final = 3600.0
"""Steps that ended longer ago than this are settled."""
KEEP: Final = 600.0
"""How long the settled points of one series are reused before they are read again."""
HOUR: Final = 3600
SPLIT_OVER: Final = 6 * 3600
"""Totals over ranges longer than this are split at an hour (the store counts them by hours)."""
MAX_SERIES: Final = 256
"""Series (dimension, key, step) kept per store; the least recently used go first."""

Point = dict[str, Any]
Read = Callable[[float, float], list[Point]]


class Settled:
    """Settled points per store, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: weakref.WeakKeyDictionary[Backend, dict[tuple[Any, ...], Any]] = (
            weakref.WeakKeyDictionary()
        )

    def points(
        self,
        store: Backend,
        series: tuple[str, str, int],
        since: float,
        until: float,
        now: float,
        read: Read,
    ) -> list[Point]:
        """The points of ``[since, until)`` per step of ``series`` (dim, key, step), oldest
        first; ``read(since, until)`` reads the store's for a range of whole steps."""
        step = series[2]
        start = int(since // step) * step
        edge = min(int((now - SETTLED) // step) * step, int(until // step) * step)
        if edge <= start:
            return read(since, until)
        with self._lock:
            kept = self._stores.setdefault(store, {})
            fetched_at, points = kept.pop(series, (now, {}))
            if now - fetched_at > KEEP:
                fetched_at, points = now, {}
            kept[series] = (fetched_at, points)  # most recently used last
            while len(kept) > MAX_SERIES:
                kept.pop(next(iter(kept)))
            have = dict(points)
        missing = [t for t in range(start, edge, step) if t not in have]
        if missing:
            for point in read(missing[0], missing[-1] + step):
                have[point["t"]] = point
            with self._lock:
                points.update((t, have[t]) for t in missing if t in have)
        settled = [dict(have[t]) for t in range(start, edge, step) if t in have]
        return settled + read(edge, until)

    def totals(
        self,
        store: Backend,
        series: tuple[Any, ...],
        since: float,
        until: float,
        now: float,
        read: Callable[[float, float], dict[str, dict[str, Any]]],
    ) -> dict[str, dict[str, Any]]:
        """Per key, the totals over ``[since, until)``: the settled whole hours kept (for
        this ``series`` and start), the rest read; ``read(since, until)`` reads the store's.

        Only for ranges longer than :data:`SPLIT_OVER` (the store counts those by whole
        hours, so the split at an hour changes nothing it counts).
        """
        edge = int((now - SETTLED) // HOUR * HOUR)
        start = int(since // HOUR * HOUR)
        if until - since <= SPLIT_OVER or edge - start <= SPLIT_OVER or until <= edge:
            return read(since, until)
        key = ("totals", *series, start, edge)
        with self._lock:
            kept = self._stores.setdefault(store, {})
            found = kept.pop(key, None)
            if found is not None and now - found[0] <= KEEP:
                kept[key] = found
        if found is None or now - found[0] > KEEP:
            found = (now, read(since, edge))
            with self._lock:
                kept[key] = found
                while len(kept) > MAX_SERIES:
                    kept.pop(next(iter(kept)))
        return _add(found[1], read(edge, until))


def _add(
    one: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Totals per key summed: counts added, histograms added bucket by bucket (new dicts)."""
    found: dict[str, dict[str, Any]] = {}
    for part in (one, other):
        for key, row in part.items():
            known = found.get(key)
            if known is None:
                found[key] = {k: list(v) if isinstance(v, list) else v for k, v in row.items()}
                continue
            for name, value in row.items():
                if isinstance(value, list):
                    known[name] = [a + b for a, b in zip(known[name], value, strict=True)]
                elif isinstance(value, int):
                    known[name] = known.get(name, 0) + value
    return found
