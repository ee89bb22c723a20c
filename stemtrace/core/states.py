"""Task states and their precedence: the core rule that makes ingestion order-tolerant.

Events of one task come from several processes and arrive in any order. The
task's state is that of its *highest* event by :func:`state_key`: terminal
states beat everything; otherwise the later attempt wins (a retried task goes
``STARTED, RETRY, STARTED, ...`` under one id), and within an attempt the
lifecycle order ``PENDING < RECEIVED < STARTED < RETRY`` applies. Ties go to
the later timestamp. Pure: imports only :mod:`stemtrace.core.events`.
"""

from __future__ import annotations

from typing import Final

from stemtrace.core import events as ev

PENDING: Final = "PENDING"
RECEIVED: Final = "RECEIVED"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
REJECTED: Final = "REJECTED"
NOT_RUN: Final = "NOT_RUN"
"""Derived, never stored: a planned chain link or chord callback that will not run."""
PLANNED: Final = "PLANNED"
"""Derived, never stored: a planned link whose predecessors are still going."""

ALL: Final = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED)
TERMINAL: Final = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})
WAITING: Final = (PENDING, RECEIVED)
"""Sent and not started yet: such a task's queue wait so far is ``now - sent_at``."""
BROKEN: Final = frozenset({FAILURE, REVOKED, REJECTED})

KIND_STATE: Final = {
    ev.SENT: PENDING,
    ev.RECEIVED: RECEIVED,
    ev.STARTED: STARTED,
    ev.RETRY: RETRY,
    ev.SUCCEEDED: SUCCESS,
    ev.FAILED: FAILURE,
    ev.REVOKED: REVOKED,
    ev.REJECTED: REJECTED,
}

RANK: Final = {
    PENDING: 0,
    RECEIVED: 1,
    STARTED: 2,
    RETRY: 3,
    REJECTED: 4,
    REVOKED: 5,
    FAILURE: 6,
    SUCCESS: 7,
}

TERMINAL_ATTEMPT: Final = 1 << 30


def state_key(kind: str, retries: int | None) -> tuple[str, int, int]:
    """``(state, attempt, rank)`` of a task event; compare ``(attempt, rank, ts)``.

    A ``sent`` or ``received`` event of a retry (``retries`` > 0) leaves the
    task in ``RETRY``: it is waiting for its next attempt until that starts.
    """
    state = KIND_STATE[kind]
    if state in TERMINAL:
        return state, TERMINAL_ATTEMPT, RANK[state]
    attempt = retries if isinstance(retries, int) and retries > 0 else 0
    if attempt and state in (PENDING, RECEIVED):
        return RETRY, attempt - 1, RANK[RETRY]
    return state, attempt, RANK[state]


LOOKS: Final[dict[str, tuple[str, str, str]]] = {
    SUCCESS: ("✓", "success", "success"),
    FAILURE: ("✗", "failure", "failure"),
    REJECTED: ("✗", "rejected", "failure"),
    REVOKED: ("⊘", "revoked", "revoked"),
    RETRY: ("↻", "retry", "retry"),
    STARTED: ("▶", "running", "started"),
    RECEIVED: ("◷", "received", "waiting"),
    PENDING: ("◷", "pending", "waiting"),
    NOT_RUN: ("\u2013", "not run", "ghost"),  # an en dash
    PLANNED: ("○", "planned", "ghost"),
    "UNKNOWN": ("?", "unknown", "unknown"),
}
"""How each state looks: its icon, its word and its style class. Colour is never the
only cue. The pages render from it, and hand it to the graph island as JSON (the
``graph_island`` macro's ``#state-looks``); react-graph/test/states.json is a copy
for the island's own tests, held to this one by tests/test_render.py."""
