"""The store's surface: all that ingest, the server and the CLI may call on a store.

A backend is one class that satisfies :class:`Backend` (reads, the writer's
claim, closing) and hands out :class:`Writer` objects (a batch at a time, in
one transaction, with the cursor that covers it). SQLite's is
:class:`stemtrace.store.schema.Store`; a second backend implements exactly
these two protocols, and the tests that take the ``store`` fixture run
against each. Nothing outside ``stemtrace.store`` imports another module of
it (``tests/test_layers.py`` holds the layers to that).

Rows come back as plain dicts (JSON columns decoded); times are epoch
seconds. Every read is safe from any thread; a writer belongs to one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stemtrace.core.events import Event
from stemtrace.store.ingest import IngestResult
from stemtrace.store.lists import FLOW_OUTCOMES, FlowFilters
from stemtrace.store.queries import BadCursor, TaskFilters
from stemtrace.store.skipped import Skip

__all__ = [
    "FLOW_OUTCOMES",
    "NO_UPKEEP",
    "Backend",
    "BadCursor",
    "FlowFilters",
    "IngestResult",
    "Skip",
    "TaskFilters",
    "Upkeep",
    "Writer",
]

Row = dict[str, Any]


@dataclass(frozen=True)
class Upkeep:
    """What a writer does between batches besides writing them."""

    max_age: float | None = None
    """Forget tasks first seen more than this many seconds ago (``None``: keep)."""
    max_tasks: int | None = None
    """Keep at most this many tasks, forgetting the oldest (``None``: no limit)."""
    index: bool = False
    """Keep the text index behind ``q`` up to date (one writer per store does)."""
    minutes_for: float = 2 * 86400
    """Seconds the rollups keep per-minute periods; older minutes fold into hours."""


NO_UPKEEP = Upkeep()
"""Write, and nothing else (the default)."""


class Writer(Protocol):
    """Writes batches of events; one per consumer, used by that consumer's thread only."""

    def ingest(
        self,
        batch: Iterable[Event],
        cursor: tuple[str, str] | None = None,
        skipped: Sequence[Skip] = (),
    ) -> IngestResult:
        """The batch, the cursor ``(source, position)`` covering it and what it skipped.

        One transaction: all of it is stored or none. Idempotent per event id,
        so a batch read again after a crash changes nothing.
        """

    def position(self, source: str) -> str | None:
        """How far the consumer of ``source`` had read when it last committed."""

    def upkeep(self, *, caught_up: bool) -> tuple[int, bool]:
        """Retention and indexing, a slice at a time: ``(tasks forgotten, more to do)``."""

    def record_depths(
        self, samples: Mapping[str, tuple[int | None, int | None, str | None]], at: float
    ) -> None:
        """The broker's ``(messages, consumers, error)`` per queue, read at ``at``.

        Kept as each queue's latest and as the largest count of its minute
        (pruned with the rollups' minutes).
        """

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a failed write was the database's fault (retry the batch), not the events'."""

    @property
    def search_status(self) -> dict[str, Any] | None:
        """How far the text index has got, when this writer keeps it."""


class Backend(Protocol):
    """One store: what the server and the CLI read, and the writers ingest uses."""

    @property
    def path(self) -> str:
        """Where the store lives, as shown to people (a file, a database URL without secrets)."""

    # -- writing ---------------------------------------------------------------

    def claim_writer(self) -> str | None:
        """Become a writer; ``None`` when this process may write, else who holds the store."""

    def open_writer(self, upkeep: Upkeep = NO_UPKEEP, *, separate: bool = False) -> Writer:
        """A writer; ``separate`` gives a second consumer of this process its own connection."""

    # -- one task --------------------------------------------------------------

    def get_task(self, task_id: str) -> Row | None:
        """The whole row of one task, or ``None``."""

    def task_events(self, task_id: str) -> list[Row]:
        """The task's event history in lifecycle order."""

    def children(self, task_id: str, limit: int = 500) -> list[Row]:
        """The tasks ``task_id`` sent (list fields), oldest first."""

    # -- many tasks ------------------------------------------------------------

    def list_tasks(
        self, filters: TaskFilters, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        """A page of tasks, newest first, and the cursor of the next (raises :class:`BadCursor`)."""

    def flow_rows(self, task_id: str) -> list[Row] | None:
        """Every task in the flow of ``task_id`` (a task, group or planned id), or ``None``."""

    def trace_rows(self, trace_id: str) -> list[Row]:
        """The trace's tasks in the order first seen (list and flow fields)."""

    def group_page(self, group_id: str, offset: int, limit: int) -> tuple[int, list[Row]]:
        """``(size, members)`` of a group in group order."""

    def list_flows(
        self, filters: FlowFilters, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        """Workflows (flows of more than one task), newest first: root, shape, outcome, times."""

    def list_traces(
        self, since: float | None, until: float | None, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        """Traces set on purpose or of more than one task, newest first."""

    def error_groups(
        self, name: str | None, since: float, until: float, limit: int = 50
    ) -> list[Row]:
        """Failures in ``[since, until)`` grouped by task name, exception type and message."""

    # -- the whole store -------------------------------------------------------

    def stats(self, since: float, until: float, step: int, dim: str, key: str) -> list[Row]:
        """The rollups per ``step`` seconds over ``[since, until)`` for one key of ``dim``.

        ``dim`` is ``all`` (key ``""``), ``name``, ``queue`` or ``worker``. Each
        point: ``t``, the counts of :data:`stemtrace.store.rollups.OUTCOMES`,
        and ``wait`` and ``run``: counts per bucket of :mod:`stemtrace.core.buckets`.
        """

    def stats_by(
        self, dim: str, since: float, until: float, metrics: tuple[str, ...] = ("wait", "run")
    ) -> dict[str, Row]:
        """The same totals over ``[since, until)`` for every key of ``dim`` at once.

        Only the histograms of ``metrics`` are read. Ranges over six hours are
        counted by whole hours.
        """

    def since_ever(self, dim: str, metrics: tuple[str, ...] = ("wait", "run")) -> dict[str, Row]:
        """Per key of ``dim``: the same totals since the store began; they only grow. Only
        the histograms of ``metrics`` are read (the others are all zeros)."""

    def tasks_by_state(self) -> dict[str, dict[str, int]]:
        """Per task name, how many stored tasks are in each state now."""

    def counts(self) -> dict[str, int]:
        """``{"tasks": n}``: the tasks stored with a name (a task is counted once named)."""

    def registry(self) -> list[Row]:
        """Task definitions and what ran of each; may be a few seconds old."""

    def workers(
        self, now: float | None = None, timeout: float = 60.0, *, running: bool = True
    ) -> list[Row]:
        """Every worker seen, with its state at ``now``: ``lost`` when silent for
        ``timeout`` seconds or three heartbeats, whichever is longer; ``running=False``
        leaves out the tasks each runs (``running`` is then empty)."""

    def inflight(self, limit: int = 20_000) -> list[Row]:
        """Up to ``limit`` tasks not finished yet (:mod:`stemtrace.store.inflight`)."""

    def ahead_of(self, queue: str, sent_at: float) -> int:
        """Tasks sent to ``queue`` before ``sent_at`` that no worker received yet."""

    def time_limits(self) -> dict[str, tuple[float | None, float | None]]:
        """Per defined task name: its soft and hard time limits."""

    def worker(
        self, hostname: str, since: float, now: float | None = None, timeout: float = 60.0
    ) -> Row | None:
        """One worker as :meth:`workers` has it, with its page's lists, or ``None``.

        ``gaps`` (``start``, ``end``): silences and absences overlapping ``[since, now]``;
        ``running``, ``held`` (received, not started) and ``scheduled`` (``due`` later:
        an ETA, or a retry's next attempt) now; ``failures`` first seen since ``since``,
        newest first (see :mod:`stemtrace.store.worker_detail`).
        """

    def filter_choices(self) -> dict[str, list[str]]:
        """The task names and workers offered as filters."""

    def known_queues(self) -> list[str]:
        """Every queue known: workers' subscriptions and task definitions first, then
        the other queues tasks were sent to."""

    def queue_depths(self) -> dict[str, Row]:
        """Per queue, the broker's count as last polled: ``messages``, ``consumers``,
        ``error``, ``at``."""

    def queue_backlog(
        self, queues: list[str], since: float, step: int = 60
    ) -> dict[str, list[tuple[int, int]]]:
        """Per queue, ``(t, largest count polled in [t, t + step))`` since ``since``, oldest
        first; ``step`` is a whole number of minutes in seconds."""

    def waiting_by_queue(self) -> dict[str, Row]:
        """Per queue, the tasks sent and not received: ``count``, ``oldest_id``,
        ``oldest_name``, ``oldest_sent_at`` (read from the in-flight tasks only)."""

    def scheduled(self, limit: int) -> tuple[int, list[Row]]:
        """Tasks with an ETA not started yet, soonest due first: ``(total, first limit)``.

        Each row: ``id``, ``name``, ``state``, ``queue``, ``worker``, ``eta``,
        ``due`` (epoch seconds or ``None``), ``retries``, ``sent_at``, ``received_at``.
        """

    def skipped(self, samples: int = 20) -> dict[str, Any]:
        """Input the consumers left out: counts by reason and the newest samples."""

    def is_empty(self) -> bool:
        """Whether no task at all is stored."""

    def last_write(self) -> float | None:
        """When a consumer last committed a batch."""

    def size_bytes(self) -> int:
        """Bytes the store takes on disk."""

    def close(self) -> None:
        """Release every connection."""
