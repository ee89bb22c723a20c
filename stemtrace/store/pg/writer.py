"""PostgreSQL's writer: the batches SQLite's :class:`~stemtrace.store.ingest.Ingestor`
writes, with the same merge rules, in one PostgreSQL transaction each.

The batch is collected by :func:`stemtrace.store.ingest.collect` (task rows merged
per task by :func:`~stemtrace.store.ingest.merge_rows`, history records, worker
events), and the upsert's ``SET`` is :func:`~stemtrace.store.ingest.merge_set`'s,
spelled for PostgreSQL: the precedence, first-known, earliest and latest rules are
one definition for both backends. The cursor covering the batch commits with it,
and so does a notification that it did (:mod:`~stemtrace.store.pg.listen`).

A task's row lives in the partition of the day it was first written
(:mod:`~stemtrace.store.pg.schema`). Each batch takes the shared advisory lock on
``tasks_day`` and reads the day new tasks go into, looks up the days of the tasks it
names that are stored already (in the days writers may still write into), and upserts
each row into its day: ``ON CONFLICT (id, day)``. Two writers that both find a task
new both insert it into the same day (the day moves on only once no batch holds the
lock), so one of them updates the other's row instead: an ``id`` is never stored
twice. A writer whose clock has passed midnight moves the day on before its batch
(:func:`~stemtrace.store.pg.days.roll_day`), making the day's partitions first.

Rows are written into their day's partition by name (``tasks_d20250101``, the same for
``task_tally`` and ``history``), not through the partitioned table: routing each row
of an ``executemany`` through it set the partition up again per row and cost more
than the upsert (the identity's sequence is then named: a partition has no identity
of its own before PostgreSQL 17). The batch's reads are lookups by key; a new day's
partitions are not analyzed until autovacuum gets to them, and on such guesses the
planner chose whole scans (and compiled them: JIT), so each batch turns sequential
scans and JIT off for its own transaction.

Each batch checks a connection out of the pool and gives it back, so a
connection broken by a restart of the server is dropped, and the batch that
met it (a transient failure, :func:`is_transient`) is written again on a new one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from stemtrace.core import jsonio
from stemtrace.core.events import Event
from stemtrace.store import planned
from stemtrace.store.ingest import TASK_COLUMNS, IngestResult, Merged, collect, merge_set
from stemtrace.store.pg import fleet, listen, rollup_writes, search
from stemtrace.store.pg.days import DAY, DAY_LOCK, LOCK_KEY, ensure_day, partition_name, roll_day
from stemtrace.store.pg.retention import PgRetention
from stemtrace.store.skipped import SAMPLES_KEPT, Skip, reason_key, sample_text
from stemtrace.store.surface import NO_UPKEEP, Upkeep

Conn = psycopg.Connection[tuple[Any, ...]]

_UPSERT_TASK = (
    f"INSERT INTO {{}} AS tasks (rowid, {', '.join(TASK_COLUMNS)}, day)"
    f" VALUES (nextval({{}}), {', '.join('%s' for _ in TASK_COLUMNS)}, %s)"
    f" ON CONFLICT (id, day) DO UPDATE SET {', '.join(merge_set('LEAST', 'GREATEST'))}"
    " RETURNING rowid"
)
BEGIN_TASKS = (  # the day new tasks go into stays while the lock is held (till commit)
    f"SELECT pg_advisory_xact_lock_shared({LOCK_KEY}, {DAY_LOCK}),"
    " set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true),"
    " set_config('plan_cache_mode', 'force_generic_plan', true)"
)
DAY_NOW = "SELECT day, kept_from, pg_get_serial_sequence('tasks', 'rowid') FROM tasks_day"
IN_TODAY = "SELECT id FROM {} WHERE id = ANY(%s)"
EARLIER = "SELECT id, day FROM tasks WHERE id = ANY(%s) AND day >= %s AND day < %s"
INSERT_HISTORY = "INSERT INTO {} (task_rowid, written_at, events) VALUES (%s, %s, %s)"
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
        self._rolled = -1
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
        if day > self._rolled:
            roll_day(conn, day)
            self._rolled = day

    def _tasks(self, conn: Conn, merged: Merged, now: float) -> None:
        conn.execute(BEGIN_TASKS)
        found = conn.execute(DAY_NOW).fetchone()
        assert found is not None  # m005 made its one row
        today, kept_from, sequence = int(found[0]), int(found[1]), str(found[2])
        stored = self._stored(conn, list(merged), today, kept_from)
        in_days: dict[int, list[list[Any]]] = {}
        for row, _ in merged.values():
            in_days.setdefault(stored.get(row[0], today), []).append(_clean(row))
        rowids: dict[str, int] = {}
        days: dict[int, int] = {}
        cursor = conn.cursor()
        # Each day's rows into its own partition (routing each row through ``tasks`` costs
        # PostgreSQL more than the upsert), in (day, id) order: two writers upserting the
        # same tasks lock them in one order.
        for day in sorted(in_days):
            rows = sorted(in_days[day], key=lambda row: str(row[0]))
            upsert = sql.SQL(_UPSERT_TASK).format(
                sql.Identifier(partition_name(day, "tasks")), sql.Literal(sequence)
            )
            cursor.executemany(upsert, [[*row, day] for row in rows], returning=True)
            for row in rows:
                rowid = cursor.fetchone()[0]  # type: ignore[index]
                rowids[row[0]] = rowid
                days[rowid] = day
                cursor.nextset()
        cursor.executemany(
            sql.SQL(INSERT_HISTORY).format(sql.Identifier(partition_name(int(now // DAY)))),
            [
                (rowids[task_id], now, _no_nul(jsonio.dumps(records)))
                for task_id, (_, records) in merged.items()
            ],
        )
        rollup_writes.tally(conn, days)
        named = planned_pairs(  # in batch order, as SQLite's: the first to name an id keeps it
            (rowids[row[0]], row[_CHAIN], row[_CHORD])
            for row, _ in merged.values()
            if row[_CHAIN] is not None or row[_CHORD] is not None
        )
        if named:
            conn.cursor().executemany(
                "INSERT INTO planned (id, task_rowid) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                named,
            )

    @staticmethod
    def _stored(conn: Conn, ids: list[str], today: int, kept_from: int) -> dict[str, int]:
        """The day of each of ``ids`` already stored. Today's partition first: most tasks a
        batch names that are stored are today's; only the others are looked for in each
        earlier day's index (a day that retention closed is no longer looked in)."""
        in_today = sql.SQL(IN_TODAY).format(sql.Identifier(partition_name(today, "tasks")))
        found = {str(task_id): today for (task_id,) in conn.execute(in_today, (ids,))}
        rest = [task_id for task_id in ids if task_id not in found]
        if rest and kept_from < today:
            found.update(conn.execute(EARLIER, (rest, kept_from, today)).fetchall())
        return found

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
