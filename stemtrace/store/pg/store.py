"""One PostgreSQL database as stemtrace's store: a connection pool, migrated when opened.

What is built: the schema and its migrations, the writer
(:class:`~stemtrace.store.pg.writer.PgWriter`), the reads of one task and of the
tasks list (:mod:`~stemtrace.store.pg.reads`), of the rollups and of the rest
(see :class:`PgStore`): the whole of :class:`~stemtrace.store.surface.Backend`,
which mypy checks (:func:`_is_backend`). :func:`stemtrace.store.open_store` opens it for a
``postgresql://`` target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from stemtrace.store.pg import reads
from stemtrace.store.pg.rollup_reads import RollupReads
from stemtrace.store.pg.schema import migrate
from stemtrace.store.pg.shared_reads import SharedReads
from stemtrace.store.pg.writer import Conn, PgWriter
from stemtrace.store.queries import TaskFilters
from stemtrace.store.surface import NO_UPKEEP, Upkeep, Writer

if TYPE_CHECKING:
    from stemtrace.store.surface import Backend
from stemtrace.store.targets import redacted

POOL_SIZE = 8
"""Connections a store keeps at most: its writers' batches and its readers' queries."""
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection before a batch or a read fails (a transient failure)."""
DOWN_TIMEOUT = 1.0
"""The same wait while the server is known to be out of reach (:class:`Pool`)."""
RECONNECT_TIMEOUT = 10.0
"""Seconds the pool retries a lost connection (waiting 1, 2, 4 s between tries) before it
gives up that one and starts afresh on the next demand: a restarted server is found
again within seconds of coming back, not after the doubled waits of a long outage."""


class Pool(ConnectionPool[Conn]):
    """psycopg's pool, which stops making every caller wait its whole time-out while the
    server is known to be out of reach: once a connection came back broken or a wait
    timed out, callers wait :data:`DOWN_TIMEOUT` at most, until one gets a connection
    again. A page then says the store is unavailable within a second, instead of
    holding a thread (and its reader) for ten."""

    down = False

    def getconn(self, timeout: float | None = None) -> Conn:
        if timeout is None:
            timeout = min(DOWN_TIMEOUT, self.timeout) if self.down else self.timeout
        try:
            conn = super().getconn(timeout)
        except PoolTimeout as exc:
            self.down = True
            raise PoolTimeout(
                f"no connection to PostgreSQL within {timeout:g} s: it is down, restarting"
                " or out of connections"
            ) from exc
        self.down = False
        return conn

    def putconn(self, conn: Conn) -> None:
        if conn.broken:  # the server went away under it (restarted, stopped, killed)
            self.down = True
        super().putconn(conn)


def _configure(conn: Conn) -> None:
    """Each pooled connection without PostgreSQL's JIT compiler: stemtrace's queries are
    short look-ups that the planner sometimes guesses expensive (a flow's shape over its
    10,000 tasks, the flows list), and compiling them cost seconds where running them took
    milliseconds (the flows page 6.8 s at p95 with it, 1.1 s without, on a million tasks)."""
    conn.execute("SET jit = off")


class PgStore(RollupReads, SharedReads):
    """The store at a ``postgresql://`` URL; its schema migrated before it is used.

    The rollups' reads (``stats``, ``stats_by``, ``since_ever``, ``tasks_by_state``,
    ``counts``, ``registry``, ``error_groups``) come from
    :class:`~stemtrace.store.pg.rollup_reads.RollupReads`; flows, traces, groups, workers,
    the in-flight tasks, the queues and the workflows and traces lists from
    :class:`~stemtrace.store.pg.shared_reads.SharedReads`.
    """

    def __init__(
        self, url: str, *, pool_size: int = POOL_SIZE, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self.url = url
        self.pool: ConnectionPool[Conn] = Pool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            configure=_configure,
            timeout=timeout,
            reconnect_timeout=RECONNECT_TIMEOUT,
            name="stemtrace",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=timeout)
            with self.pool.connection() as conn:
                self.applied = migrate(conn)
        except BaseException:
            self.pool.close()
            raise

    @property
    def path(self) -> str:
        """The database's URL without its password."""
        return redacted(self.url)

    def claim_writer(self) -> str | None:
        """Any number of processes may write one PostgreSQL database: never refused."""
        return None

    def open_writer(self, upkeep: Upkeep = NO_UPKEEP, *, separate: bool = False) -> Writer:
        """A writer; each batch takes a pooled connection, so ``separate`` changes nothing."""
        return PgWriter(self.pool, upkeep)

    def size_bytes(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    # -- the surface's reads built so far (see stemtrace.store.surface.Backend) --

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return reads.get_task(conn, task_id)

    def task_events(self, task_id: str) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return reads.task_events(conn, task_id)

    def children(self, task_id: str, limit: int = 500) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return reads.children(conn, task_id, limit)

    def list_tasks(
        self, filters: TaskFilters, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self.pool.connection() as conn:
            return reads.list_tasks(conn, filters, cursor, limit)

    def connection(self) -> Any:
        """A pooled connection, as a context manager (for reads, and for tests)."""
        return self.pool.connection()

    def close(self) -> None:
        self.pool.close()


def open_postgres(url: str) -> PgStore:
    """The store at ``url``, migrated (raises ``psycopg.OperationalError`` when unreachable)."""
    try:
        # one plain connection first: its failure says why (the pool's says only "timed out")
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)).close()
        return PgStore(url)
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(f"PostgreSQL store at {redacted(url)}: {exc}") from exc


def _is_backend(store: PgStore) -> Backend:
    """Never called: mypy checks here that this store is the whole surface."""
    return store
