"""PostgreSQL's ``q``: SQLite's answers, found through a ``pg_trgm`` index of the settled tasks.

``q`` finds the tasks whose name, id, args, kwargs or exception contains a text,
ignoring the case of ASCII letters only, as SQLite's ``LIKE`` does
(:mod:`stemtrace.store.search`). PostgreSQL's ``ILIKE`` folds every letter it
knows ('É' finds 'é', 'K' the Kelvin sign), so it is not used: each column is
matched as ``lower(column COLLATE "C") LIKE pattern``, where ``lower`` under the
``C`` collation changes ``A`` to ``Z`` and nothing else, and the pattern is
SQLite's (``%``, ``_`` and ``\\`` of the text escaped by the same function,
``stemtrace.store.queries._like``) with its ASCII letters lowered here.

Those six expressions are what the GIN index ``tasks_text`` (migration m004) holds
the trigrams of, so the planner can answer a rare text from the index
(``BitmapOr`` of the six) and a common one by reading the newest tasks first and
stopping at a page, as it estimates from the statistics it keeps of the six
expressions (:data:`STATISTICS`); the index only finds candidates, the same
``LIKE`` decides, so the answer never depends on which way it went.

The index holds the *settled* tasks only: those not in flight (``state NOT IN``
the states of ``tasks_inflight``). A GIN index is costly to keep: PostgreSQL adds
every trigram again for each new version of a row it covers, and a task's row
gets one per state it goes through (sent, received, started, finished: every
update changes an indexed column, so none is a HOT update). Covering only the
settled tasks, a task goes in about once, when it finishes (again when a late
event rewrites it). The tasks in flight (a few thousand, read through
``tasks_inflight``) are checked directly, as SQLite checks its pending ones: a
search is the newest of both halves (:func:`page`). A filter on states leaves out
a half it cannot match.

``pg_trgm`` ships with PostgreSQL (its contrib modules) and is a trusted extension:
a role with ``CREATE`` on the database may add it, and the migration does. When it
cannot, stemtrace refuses to start with :class:`TrigramsUnavailable`, which says what
an administrator runs; nothing else is searched without it.

A text with a NUL: PostgreSQL's text holds none, and the writer stores one as
U+FFFD (:func:`stemtrace.store.pg.writer._no_nul`); ``q`` is changed the same way,
so it finds what was stored. (SQLite's ``LIKE`` stops at a NUL: there the text
before it is searched.)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from stemtrace.store.migrations import INFLIGHT_STATES
from stemtrace.store.queries import _like
from stemtrace.store.search import TEXT_COLUMNS

logger = logging.getLogger("stemtrace")

Conn = psycopg.Connection[tuple[Any, ...]]

INDEX = "tasks_text"
IN_FLIGHT = f"state IN ({INFLIGHT_STATES})"
"""``tasks_inflight``'s condition, word for word: the half of a search read through it."""
SETTLED = f"state NOT IN ({INFLIGHT_STATES})"
"""The index's condition, word for word: the half of a search read through it."""
INFLIGHT_SET = frozenset(state.strip(" '") for state in INFLIGHT_STATES.split(","))


def lowered(column: str) -> str:
    """A column with its ASCII letters lowered, and no others: the index's expression."""
    return f'lower({column} COLLATE "C")'


CREATE_INDEX = (
    f"CREATE INDEX {INDEX} ON tasks USING gin"
    f" ({', '.join(f'({lowered(column)}) gin_trgm_ops' for column in TEXT_COLUMNS)})"
    f" WHERE {SETTLED}"
)


def statistics(table: str = "tasks") -> list[str]:
    """:data:`STATISTICS` of ``table`` (``tasks``, or one of its partitions: a statistics
    object on a partitioned table is not made on its partitions, which the planner
    reads each with its own statistics)."""
    return [
        f"CREATE STATISTICS IF NOT EXISTS {table}_text_{column} ON ({lowered(column)}) FROM {table}"
        for column in TEXT_COLUMNS
    ]


STATISTICS = statistics()
"""What ANALYZE samples of the six expressions, so that the planner knows a common text from
a rare one: it ignores the statistics of a partial index's expressions, and without any
it guesses from the length of the pattern alone (on a million tasks a six-letter text
found nowhere read every task newest first, 3 s; a name in a sixth of them went
through the index and sorted 166,000 rows, 1 s; with them: 11 and 17 ms)."""
MATCH = "(" + " OR ".join(f"{lowered(column)} LIKE ? ESCAPE '\\'" for column in TEXT_COLUMNS) + ")"
"""Whether a task holds the text: SQLite's ``LIKE``, one pattern (:func:`pattern`) per column."""
BOUND = len(TEXT_COLUMNS)
"""How many times :data:`MATCH` takes the pattern."""

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class TrigramsUnavailable(psycopg.OperationalError):
    """``pg_trgm`` could not be added to the database: the store cannot open.

    An ``OperationalError``, so that opening the store reports it as a database that
    cannot be used as it stands (:func:`stemtrace.store.open_store`: no traceback).
    """


def pattern(text: str) -> str:
    """The ``LIKE`` pattern of ``q``: SQLite's, its ASCII letters lowered, NUL as stored."""
    return _like(text).translate(_ASCII_LOWER).replace("\x00", "\ufffd")


def halves(states: tuple[str, ...]) -> list[str]:
    """The conditions of the halves a search reads: both, unless ``states`` rules one out."""
    if not states:
        return [SETTLED, IN_FLIGHT]
    wanted = set(states)
    return [
        condition
        for condition, matches in ((SETTLED, bool(wanted - INFLIGHT_SET)),
                                   (IN_FLIGHT, bool(wanted & INFLIGHT_SET)))
        if matches
    ]  # fmt: skip


def page(columns: str, where: list[str], states: tuple[str, ...]) -> str:
    """One page of the tasks matching ``where`` and :data:`MATCH`, newest first.

    Its parameters: ``where``'s, the pattern :data:`BOUND` times and the limit, per half
    (:func:`halves`), then the limit again. Each half is a query of its own, so
    that the planner sees the index's condition in the settled half and
    ``tasks_inflight``'s in the other (an ``OR`` of both would be folded away).
    """
    union = " UNION ALL ".join(
        f"(SELECT {columns} FROM tasks WHERE {' AND '.join([*where, condition, MATCH])}"
        " ORDER BY seen_at DESC, id DESC LIMIT ?)"
        for condition in halves(states)
    )
    return f"SELECT {columns} FROM ({union}) AS found ORDER BY seen_at DESC, id DESC LIMIT ?"


def create_index(conn: Conn) -> None:
    """Migration m004: ``pg_trgm`` (unless the database has it), :data:`CREATE_INDEX` and
    :data:`STATISTICS`.

    On a store that has tasks already this reads them all once (minutes for
    millions), holding off writers meanwhile, as any migration does.
    """
    try:
        with conn.transaction():  # a savepoint: the reason is read before the rollback
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile,
            psycopg.errors.FeatureNotSupported) as exc:  # fmt: skip
        database = conn.info.dbname
        raise TrigramsUnavailable(
            f"stemtrace searches PostgreSQL through the pg_trgm extension, which it could"
            f" not add to database {database!r} ({str(exc).strip()}). Ask an administrator"
            f" to run  CREATE EXTENSION pg_trgm;  in it (or to grant CREATE ON DATABASE"
            f' "{database}" to this role; pg_trgm comes with PostgreSQL, in the'
            f" postgresql-contrib package where that is packaged apart), then start again."
        ) from exc
    conn.execute(CREATE_INDEX)
    if conn.info.server_version >= 140000:  # statistics of an expression: PostgreSQL 14
        for statement in STATISTICS:
            conn.execute(statement)
    else:
        logger.warning("stemtrace: PostgreSQL before 14 plans searches without statistics")


class IndexStatus:
    """What :attr:`PgWriter.search_status` shows in ``/api/health``, read once a minute.

    ``index``: the index (with ``pg_trgm``'s version) or ``None`` when it is gone;
    ``size_bytes``: its size (all partitions); ``not_indexed``: the tasks in flight,
    which every search checks directly (counted up to :data:`MOST_COUNTED`).
    """

    every = 60.0
    MOST_COUNTED = 1_000_000

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self._next = 0.0

    def read(self, pool: ConnectionPool[Conn], now: float | None = None) -> dict[str, Any] | None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return self.status
        self._next = now + self.every
        try:
            with pool.connection() as conn:
                self.status = _status(conn, self.MOST_COUNTED)
        except psycopg.Error as exc:  # shown on the next read; never fails a batch
            logger.debug("stemtrace: the search index's status: %s", exc)
        return self.status


def _status(conn: Conn, most: int) -> dict[str, Any]:
    found = conn.execute(
        "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'),"
        " coalesce((SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(to_regclass(%s))),"
        " pg_relation_size(to_regclass(%s)))",  # its partitions' (none when not partitioned)
        (INDEX, INDEX),
    ).fetchone()
    version, size = found if found is not None else (None, None)
    in_flight = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {IN_FLIGHT} LIMIT %s) AS f", (most,)
    ).fetchone()
    return {
        "index": f"{INDEX} (pg_trgm {version})" if size is not None else None,
        "size_bytes": int(size) if size is not None else None,
        "not_indexed": int(in_flight[0]) if in_flight else 0,
    }
