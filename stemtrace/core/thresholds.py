"""When a task in flight counts as a problem (:mod:`stemtrace.model.problems`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """When a task in flight counts as a problem; each is a flag and a ``STEMTRACE_*`` variable."""

    wait_seconds: float = 60.0
    """Waiting in a queue (sent, not received) at least this long ..."""
    wait_factor: float = 3.0
    """... and longer than this many times the queue's usual (p95) wait of the last day."""
    held_seconds: float = 60.0
    """Received by a worker and not started for this long (prefetched behind a long task)."""
    late_seconds: float = 60.0
    """Running at least this long ..."""
    late_factor: float = 3.0
    """... and longer than this many times its name's usual (p99) run time of the last day."""
    overdue_seconds: float = 30.0
    """Grace after a task's ETA before it is overdue."""
    retries: int = 3
    """A task retried more often than this is retrying over and over."""
    failure_factor: float = 3.0
    """A name failing this many times more often in the window than over the last day."""
    failure_window: float = 900.0
    """The window a name's recent failure rate is measured over, in seconds."""
    worker_timeout: float = 60.0
    """A worker silent this long (or three heartbeats, if longer) is lost."""
    inflight_limit: int = 20_000
    """Tasks in flight one look reads at most (a quarter per state, the longest waiting
    first); beyond it the problems are partial, and the look's cost stays bounded."""
