"""Garbage-collector settings for stemtrace's own processes (``run``, ``consume``, ``demo``).

The consumer turns every event into a few short-lived containers (the decoded
dict, its args, the rows written). With CPython's default thresholds
``(700, 10, 10)`` the collector runs every hundred-odd events, and its older
generations walk everything the process keeps alive: modules, the web app,
the batch being written. In ``bench.ingest`` that was a fifth of the
consumer's time. So once stemtrace's own processes have started they freeze
what exists (moved out of the collector's sight, never scanned again) and
let the youngest generation grow to :data:`YOUNG` allocations between passes.
Reference counting still frees everything that is not in a cycle at once;
only cyclic garbage waits a little longer.

A host application that mounts :class:`stemtrace.StemtraceExtension` keeps its
own settings: stemtrace does not change a process it does not own. It can
call :func:`tune` itself once it has started.
"""

from __future__ import annotations

import gc

YOUNG = 50_000
"""Allocations (net of frees) between two passes over the youngest generation."""


def tune() -> None:
    """Freeze what the process holds now and widen the youngest generation."""
    gc.collect()
    gc.freeze()
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG, young), middle, oldest)
