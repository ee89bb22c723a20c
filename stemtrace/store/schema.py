"""The database file: schema migrations, connections, and what lives in which table.

Tables:

* ``tasks`` - one row per task id: its current state and everything known of it.
* ``history`` - the append-only history of task events (the timeline): one
  row per task per written batch, under the task's rowid, holding that
  batch's events of the task as a JSON array of records
  (:data:`HISTORY_RECORD`). A record keeps what varies per event (host,
  worker, retries, runtime, exception ...); the structure every event repeats
  is the task row's. Readers keep the first record of
  each ``eid``, so a re-delivered event changes nothing they see. (History
  and search documents name tasks by rowid; SQLite's ``VACUUM`` keeps the
  rowids of ``tasks``, and a test checks that it still does.)
* ``workers`` - one row per worker node.
* ``registry`` - task definitions announced by workers.
* ``cursors`` - how far each consumer has read each source, written in the
  same transaction as the events it covers.
* ``skipped`` and ``skipped_samples`` - input the consumer left out: counts by
  reason, and the newest raw samples (truncated), written with the batch.
* ``planned`` - every id a row names in advance (chain links, chord
  callbacks) and the first row that named it: how an id that never ran is
  found, see :mod:`stemtrace.store.planned`.
* ``task_search`` (FTS5, trigrams), ``task_search_state`` and
  ``task_search_pending`` - the text index behind ``q``, see
  :mod:`stemtrace.store.search`.

Flow edges are not a table: they follow from ``parent_id``, ``group_id``,
``chord_id`` and the planned ``chain`` of each row, all indexed (the last two
through ``planned``), and are
rebuilt per flow by :mod:`stemtrace.model.flows`.

Writes go through one connection owned by the consumer's writer thread; reads
use one connection per reading thread. WAL lets them run side by side.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from sqlite_utils import Database

from stemtrace.store import depths, fleet, inflight, lists, queries, rollups, skipped, worker_detail
from stemtrace.store.lists import FlowFilters
from stemtrace.store.migrations import migrations
from stemtrace.store.queries import TaskFilters
from stemtrace.store.surface import NO_UPKEEP, Upkeep
from stemtrace.store.targets import DEFAULT_DB
from stemtrace.store.writer import SqliteWriter

# Binding ``None`` goes through sqlite3's adapter look-up (a key tuple, a
# registry miss, then ``__adapt__`` and ``__conform__`` probes) unless an
# adapter for it is registered; rows of mostly unknown fields bound twice as
# slowly without one. ``{}.get`` returns ``None`` for ``None``: a C-level
# identity, so ``None`` still binds as NULL, for every user of sqlite3 in the
# process.
_none_to_null = cast(Callable[[None], None], {}.get)
sqlite3.register_adapter(type(None), _none_to_null)

logger = logging.getLogger("stemtrace")

READER_CACHE_KIB = 4096
"""Page cache of each reading connection (the writer's is 32 MiB)."""


Row = dict[str, Any]


class Store:
    """One stemtrace database file; migrated to the current schema when opened.

    SQLite's :class:`stemtrace.store.surface.Backend`: the methods below the
    connections are the surface the rest of stemtrace reads through.
    """

    def __init__(self, path: str | Path = DEFAULT_DB) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._claim: IO[str] | None = None
        db = Database(self.writer())
        pending = [m.name for m in migrations.pending(db)]
        upgrading = bool(pending) and "tasks" in db.table_names()
        if upgrading:  # converting a big store takes a while (about 30 s per million tasks)
            logger.warning("stemtrace: upgrading %s (%s) ...", self.path, ", ".join(pending))
        migrations.apply(db)
        if upgrading:
            logger.warning("stemtrace: %s upgraded", self.path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-32768")  # 32 MiB: more did not write faster
        # Checkpoints are what syncs to disk in WAL mode; one per 1,000 pages (the
        # default) made each small batch of a consumer that keeps up pay for one.
        # 10,000 pages (40 MiB of log) cut the cost of such a batch by about a third.
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        rollups.register(conn)
        return conn

    def writer(self) -> sqlite3.Connection:
        """The one connection that writes; used only by the writer thread."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = self._connect()
            return self._writer

    def new_writer(self) -> sqlite3.Connection:
        """Another writing connection, for a second consumer (SQLite serialises them)."""
        conn = self._connect()
        with self._writer_lock:
            self._readers.append(conn)  # closed with the others
        return conn

    def reader(self) -> Database:
        """A read connection for the calling thread."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            # Each thread that reads has its own connection, and each connection its own
            # page cache: at the writer's 32 MiB, a server's request threads could hold over
            # a gigabyte. Reads come from the operating system's file cache just as well.
            conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            db = Database(conn)
            self._local.db = db
            with self._writer_lock:
                self._readers.append(conn)
        return db

    def claim_writer(self) -> str | None:
        """Make this process the file's one writer; ``None`` when it is, else who is.

        Two processes ingesting into one file would each store every event's
        history (states would stay right, the history doubled). The claim is an
        exclusive ``flock`` on ``<database>.writer``, held until :meth:`close`
        or the process ends (a crash releases it too); the consumers of one
        process share it. The answer names the holder's process id.
        """
        if self.path == ":memory:":
            return None
        with self._writer_lock:
            if self._claim is not None:
                return None
            path = (
                Path(self.path).expanduser().resolve().with_name(Path(self.path).name + ".writer")
            )
            handle = open(path, "a+")  # noqa: SIM115 - held open while this process writes
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip()[:40] or "unknown"
                handle.close()
                return f"process {holder} on this machine"
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            self._claim = handle
            return None

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        if self.path == ":memory:":
            return 0
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(self.path + suffix)
            if candidate.exists():
                total += candidate.stat().st_size
        return total

    def open_writer(self, upkeep: Upkeep = NO_UPKEEP, *, separate: bool = False) -> SqliteWriter:
        """A writer on the writing connection (``separate``: on a connection of its own)."""
        return SqliteWriter(self.new_writer() if separate else self.writer(), upkeep)

    # -- the surface's reads (see stemtrace.store.surface.Backend) --------------

    def _conn(self) -> sqlite3.Connection:
        return self.reader().conn

    def get_task(self, task_id: str) -> Row | None:
        return queries.get_task(self._conn(), task_id)

    def task_events(self, task_id: str) -> list[Row]:
        return queries.task_events(self._conn(), task_id)

    def children(self, task_id: str, limit: int = 500) -> list[Row]:
        return queries.children(self._conn(), task_id, limit)

    def list_tasks(
        self, filters: TaskFilters, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        return queries.list_tasks(self._conn(), filters, cursor, limit)

    def flow_rows(self, task_id: str) -> list[Row] | None:
        return queries.flow_rows(self._conn(), task_id)

    def trace_rows(self, trace_id: str) -> list[Row]:
        return queries.trace_rows(self._conn(), trace_id)

    def group_page(self, group_id: str, offset: int, limit: int) -> tuple[int, list[Row]]:
        return queries.group_page(self._conn(), group_id, offset, limit)

    def list_flows(
        self, filters: FlowFilters, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        return lists.list_flows(self._conn(), filters, cursor, limit)

    def list_traces(
        self, since: float | None, until: float | None, cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        return lists.list_traces(self._conn(), since, until, cursor, limit)

    def error_groups(
        self, name: str | None, since: float, until: float, limit: int = 50
    ) -> list[Row]:
        return lists.error_groups(self._conn(), name, since, until, limit)

    def counts(self) -> dict[str, int]:
        return queries.counts(self._conn())

    def stats(self, since: float, until: float, step: int, dim: str, key: str) -> list[Row]:
        return rollups.series(self._conn(), since, until, step, dim, key)

    def stats_by(
        self, dim: str, since: float, until: float, metrics: tuple[str, ...] = ("wait", "run")
    ) -> dict[str, Row]:
        found: dict[str, Row] = rollups.by_key(self._conn(), dim, since, until, metrics)
        return found

    def since_ever(self, dim: str, metrics: tuple[str, ...] = ("wait", "run")) -> dict[str, Row]:
        found: dict[str, Row] = rollups.since_ever(self._conn(), dim, metrics)
        return found

    def tasks_by_state(self) -> dict[str, dict[str, int]]:
        return {name: n["states"] for name, n in rollups.name_numbers(self._conn()).items()}

    def registry(self) -> list[Row]:
        return fleet.registry(self._conn())

    def workers(
        self, now: float | None = None, timeout: float = 60.0, *, running: bool = True
    ) -> list[Row]:
        return fleet.workers(self._conn(), now, timeout, running=running)

    def inflight(self, limit: int = 20_000) -> list[Row]:
        return inflight.inflight(self._conn(), limit)

    def ahead_of(self, queue: str, sent_at: float) -> int:
        return inflight.ahead_of(self._conn(), queue, sent_at)

    def time_limits(self) -> dict[str, tuple[float | None, float | None]]:
        return inflight.time_limits(self._conn())

    def worker(
        self, hostname: str, since: float, now: float | None = None, timeout: float = 60.0
    ) -> Row | None:
        now = time.time() if now is None else now
        return worker_detail.worker(self._conn(), hostname, since, now, timeout)

    def filter_choices(self) -> dict[str, list[str]]:
        return queries.filter_choices(self._conn())

    def known_queues(self) -> list[str]:
        return depths.known(self._conn())

    def queue_depths(self) -> dict[str, Row]:
        return depths.latest(self._conn())

    def queue_backlog(
        self, queues: list[str], since: float, step: int = 60
    ) -> dict[str, list[tuple[int, int]]]:
        return depths.backlog(self._conn(), queues, since, step)

    def waiting_by_queue(self) -> dict[str, Row]:
        return depths.waiting(self._conn())

    def scheduled(self, limit: int) -> tuple[int, list[Row]]:
        return depths.scheduled(self._conn(), limit)

    def skipped(self, samples: int = 20) -> dict[str, Any]:
        return skipped.summary(self._conn(), samples)

    def is_empty(self) -> bool:
        return queries.is_empty(self._conn())

    def last_write(self) -> float | None:
        return queries.last_write(self._conn())

    def close(self) -> None:
        """Close every connection, the readers of other threads included."""
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._local = threading.local()
        if self._claim is not None:
            self._claim.close()  # releases the writer's claim
            self._claim = None


def row_dict(row: Any) -> dict[str, Any]:
    return dict(row) if row is not None else {}
