"""PostgreSQL's writer: the batches SQLite's :class:`~stemtrace.store.ingest.Ingestor`
writes, with the same merge rules, in one PostgreSQL transaction each.

The batch is collected by :func:`stemtrace.store.ingest.collect` (task rows merged
per task by :func:`~stemtrace.store.ingest.merge_rows`, history records, worker
events), and the upsert's ``SET`` is :func:`~stemtrace.store.ingest.merge_set`'s,
spelled for PostgreSQL: the precedence, first-known, earliest and latest rules are
one definition for both backends. The cursor covering the batch commits with it,
and so does a notification that it did (:mod:`~stemtrace.store.pg.listen`).

Each batch checks a connection out of the pool and gives it back, so a
connection broken by a restart of the server is dropped, and the batch that
met it (a transient failure, :func:`is_transient`) is written again on a new one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from stemtrace.core import jsonio
from stemtrace.core.events import Event
from stemtrace.store import planned
from stemtrace.store.ingest import TASK_COLUMNS, IngestResult, Merged, collect, merge_set
from stemtrace.store.pg import fleet, listen, rollup_writes, search
from stemtrace.store.pg.retention import PgRetention
from stemtrace.store.pg.schema import DAY, ensure_day
from stemtrace.store.skipped import SAMPLES_KEPT, Skip, reason_key, sample_text
from stemtrace.store.surface import NO_UPKEEP, Upkeep

Conn = psycopg.Connection[tuple[Any, ...]]

UPSERT_TASK = (
    f"INSERT INTO tasks AS tasks ({', '.join(TASK_COLUMNS)})"
    f" VALUES ({', '.join('%s' for _ in TASK_COLUMNS)})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(merge_set('LEAST', 'GREATEST'))}"
)
ROWIDS = "SELECT id, rowid FROM tasks WHERE id = ANY(%s)"
INSERT_HISTORY = "INSERT INTO history (task_rowid, written_at, events) VALUES (%s, %s, %s)"
UPSERT_CURSOR = (
    "INSERT INTO cursors (source, position, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (source) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at"
)
NOTIFY = f"SELECT pg_notify('{listen.CHANNEL}', %s)"
_COL = {name: i for i, name in enumerate(TASK_COLUMNS)}
_WORKER, _STATE_TS = _COL["worker"], _COL["state_ts"]
_CHAIN, _CHORD = _COL["chain"], _COL["chord_id"]


def is_transient(exc: BaseException) -> bool:
    """Whether a write failed because of the database (down, restarting, out of room,
    a deadlock or serialisation failure), not because of the events.

    psycopg files every such failure under ``OperationalError`` (SQLSTATE
    classes 08, 40, 53, 57 ...); a closed connection surfaces as an
    ``InterfaceError``; the pool's time-out when no connection can be had is
    an ``OperationalError`` too. Bad data (``DataError``, ``IntegrityError``,
    ``ProgrammingError``) is not transient: those events would fail again.
    """
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return True
    if isinstance(exc, psycopg.InterfaceError):
        return "closed" in str(exc).lower() or "connection" in str(exc).lower()
    return isinstance(exc, OSError | MemoryError)


def _no_nul(value: Any) -> Any:
    """PostgreSQL's text holds no NUL character (SQLite's does): it is stored as U+FFFD."""
    if type(value) is str and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _clean(row: Sequence[Any]) -> list[Any]:
    return [_no_nul(value) for value in row]


class PgWriter:
    """A :class:`stemtrace.store.surface.Writer` on a PostgreSQL connection pool.

    Any number may write one database at once (each batch one transaction;
    the merge rules make the order of batches irrelevant to what is stored).
    """

    def __init__(self, pool: ConnectionPool[Conn], upkeep: Upkeep = NO_UPKEEP) -> None:
        self.pool = pool
        self.retention = (
            PgRetention(max_age=upkeep.max_age, max_tasks=upkeep.max_tasks)
            if upkeep.max_age is not None or upkeep.max_tasks is not None
            else None
        )
        self._days: set[int] = set()
        self.minutes_for = upkeep.minutes_for
        self._next_fold = 0.0
        self._text_index = search.IndexStatus()

    def ingest(
        self,
        batch: Iterable[Event],
        cursor: tuple[str, str] | None = None,
        skipped: Sequence[Skip] = (),
    ) -> IngestResult:
        """Write a batch, the cursor that covers it and what it skipped, in one transaction."""
        now = time.time()
        merged, worker_events, result = collect(batch, now)
        with self.pool.connection() as conn:
            if merged:
                self._ensure_day(conn, now)
            with conn.transaction():
                if merged:
                    self._tasks(conn, merged, now)
                for event in worker_events:
                    fleet.worker_event(conn, _clean_event(event), now)
                fleet.touch(conn, [(row[_WORKER], row[_STATE_TS]) for row, _ in merged.values()])
                if skipped:
                    record_skipped(conn, skipped, cursor[0] if cursor else "", now)
                if cursor is not None:
                    conn.execute(UPSERT_CURSOR, (cursor[0], cursor[1], now))
                if merged or worker_events:  # heard by listeners at commit
                    changed = listen.payload(len(result.task_ids), len(result.workers))
                    conn.execute(NOTIFY, (changed,))
        return result

    def _ensure_day(self, conn: Conn, now: float) -> None:
        day = int(now // DAY)
        if day not in self._days:
            ensure_day(conn, day)
            ensure_day(conn, day + 1)  # ready before midnight
            self._days.update((day, day + 1))

    def _tasks(self, conn: Conn, merged: Merged, now: float) -> None:
        rows = [_clean(row) for row, _ in merged.values()]
        # In id order: two writers upserting the same tasks lock them in one order.
        in_id_order = sorted(rows, key=lambda row: str(row[0]))
        conn.cursor().executemany(UPSERT_TASK, in_id_order)
        rowids: dict[str, int] = dict(conn.execute(ROWIDS, (list(merged),)).fetchall())
        conn.cursor().executemany(
            INSERT_HISTORY,
            [
                (rowids[task_id], now, _no_nul(jsonio.dumps(records)))
                for task_id, (_, records) in merged.items()
            ],
        )
        rollup_writes.tally(conn, rowids.values())
        named = planned_pairs(  # in batch order, as SQLite's: the first to name an id keeps it
            (rowids[row[0]], row[_CHAIN], row[_CHORD])
            for row in rows
            if row[_CHAIN] is not None or row[_CHORD] is not None
        )
        if named:
            conn.cursor().executemany(
                "INSERT INTO planned (id, task_rowid) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                named,
            )

    def position(self, source: str) -> str | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT position FROM cursors WHERE source = %s", (source,))
            found = row.fetchone()
        return str(found[0]) if found else None

    def upkeep(self, *, caught_up: bool) -> tuple[int, bool]:
        self.fold()
        if self.retention is None:
            return 0, False
        with self.pool.connection() as conn:
            pruned = self.retention.step(conn)
        return pruned, pruned >= self.retention.slice_size

    def fold(self, now: float | None = None) -> None:
        """Fold the rollups' old minutes into hours, once a minute (as SQLite's writer)."""
        now = time.time() if now is None else now
        if now < self._next_fold:
            return
        self._next_fold = now + 60.0
        with self.pool.connection() as conn, conn.transaction():
            rollup_writes.fold(conn, now - self.minutes_for)

    def record_depths(
        self, samples: Mapping[str, tuple[int | None, int | None, str | None]], at: float
    ) -> None:
        """The broker's counts of its queues, read at ``at``, in one transaction."""
        minute = int(at // 60) * 60
        with self.pool.connection() as conn, conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO queue_depths (queue, messages, consumers, error, at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (queue) DO UPDATE SET"
                " messages = excluded.messages, consumers = excluded.consumers,"
                " error = excluded.error, at = excluded.at",
                [(queue, *_clean(sample), at) for queue, sample in samples.items()],
            )
            conn.cursor().executemany(
                "INSERT INTO queue_depth_minutes AS m (queue, t, messages) VALUES (%s, %s, %s)"
                " ON CONFLICT (queue, t) DO UPDATE"
                " SET messages = GREATEST(m.messages, excluded.messages)",
                [(queue, minute, s[0]) for queue, s in samples.items() if s[0] is not None],
            )

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    @property
    def search_status(self) -> dict[str, Any] | None:
        """The text index behind ``q``: its size, the tasks in flight it leaves to scan."""
        return self._text_index.read(self.pool)


def _clean_event(event: Event) -> Event:
    """The event, its text fields without NUL characters (a copy only when it has any)."""
    if not any(type(v) is str and "\x00" in v for v in event.values()):
        return event
    return {key: _no_nul(value) for key, value in event.items()}


def planned_pairs(named: Iterable[tuple[int, str | None, str | None]]) -> list[tuple[str, int]]:
    """``(planned id, rowid)`` for the ids each ``(rowid, chain JSON, chord_id)`` names."""
    pairs: list[tuple[str, int]] = []
    for rowid, chain, chord_id in named:
        pairs.extend((link_id, rowid) for link_id in planned.link_ids(chain))
        if chord_id:
            pairs.append((chord_id, rowid))
    return pairs


def record_skipped(conn: Conn, skipped: Sequence[Skip], source: str, now: float) -> None:
    """Count ``skipped`` by reason and keep the newest samples (SQLite's
    :func:`stemtrace.store.skipped.record`, in the batch's transaction)."""
    counts: dict[str, int] = {}
    for skip in skipped:
        key = _no_nul(reason_key(skip.reason))
        counts[key] = counts.get(key, 0) + 1
    conn.cursor().executemany(
        "INSERT INTO skipped AS s (reason, count, first_at, last_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (reason) DO UPDATE SET count = s.count + excluded.count,"
        " last_at = excluded.last_at",
        [(key, count, now, now) for key, count in counts.items()],
    )
    conn.cursor().executemany(
        "INSERT INTO skipped_samples (at, source, place, reason, sample)"
        " VALUES (%s, %s, %s, %s, %s)",
        [_clean((now, source, s.where[:200], s.reason[:500], sample_text(s.sample)))
         for s in skipped[-SAMPLES_KEPT:]],
    )  # fmt: skip
    conn.execute(
        "DELETE FROM skipped_samples WHERE id <= (SELECT MAX(id) FROM skipped_samples) - %s",
        (SAMPLES_KEPT,),
    )
