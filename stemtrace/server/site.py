"""What the pages and the API read besides their requests: one :class:`Site`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stemtrace.core.thresholds import Thresholds
from stemtrace.server.live import Broadcaster
from stemtrace.server.watch import Watch
from stemtrace.store import Backend


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Site:
    """The narrow dependencies of every route: the store, the live feed, the consumer's word."""

    store: Backend
    broadcaster: Broadcaster
    consumer_status: Callable[[], dict[str, Any] | None] = _nothing
    """The consumer's counters for ``/api/health`` and ``/status``; ``None``: none runs here."""
    consumer_problem: Callable[[], tuple[str, str] | None] = _nothing
    """What the consumer cannot do right now, ``"broker"`` (read the stream) or ``"store"``
    (write the store), and why (shown on every page)."""
    standby: Callable[[], str | None] = _nothing
    """Why this server does not ingest while another process writes its store."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """When a task in flight counts as a problem."""
    watch: Watch = field(init=False, compare=False)
    """The problems right now, shared by every route of this site."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "watch", Watch(self.store, self.thresholds))
