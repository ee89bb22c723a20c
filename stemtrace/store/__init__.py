"""The store: the SQLite backend, and the surface every backend offers.

May import: core only. The rest of stemtrace imports this package and
:mod:`stemtrace.store.surface` only, never the modules behind them.
"""

import sqlite3
import sys
from collections.abc import Callable
from typing import Protocol

from stemtrace.store.queries import listed
from stemtrace.store.ranked import SORTS
from stemtrace.store.schema import Store
from stemtrace.store.surface import (
    FLOW_OUTCOMES,
    NO_UPKEEP,
    Backend,
    BadCursor,
    FlowFilters,
    IngestResult,
    Skip,
    TaskFilters,
    Upkeep,
    Writer,
)
from stemtrace.store.targets import (
    DEFAULT_DB,
    INSTALL_POSTGRES,
    BadTarget,
    Target,
    parse_target,
    postgres_driver_missing,
)

__all__ = [
    "DEFAULT_DB",
    "FLOW_OUTCOMES",
    "INSTALL_POSTGRES",
    "NO_UPKEEP",
    "SORTS",
    "Backend",
    "BadCursor",
    "BadTarget",
    "FlowFilters",
    "IngestResult",
    "Skip",
    "Stoppable",
    "Store",
    "Target",
    "TaskFilters",
    "Upkeep",
    "Writer",
    "is_unavailable",
    "listed",
    "listen_for_changes",
    "open_store",
    "parse_target",
    "postgres_driver_missing",
]


def open_store(target: str) -> Backend:
    """The store ``target`` names (see :mod:`stemtrace.store.targets`); raises
    :class:`BadTarget` for one stemtrace cannot open."""
    found = parse_target(target)
    if found.kind == "postgresql":
        missing = postgres_driver_missing()
        if missing is not None:
            raise BadTarget(f"--db {found.shown} {missing}")
        import psycopg  # only PostgreSQL's users import its driver

        from stemtrace.store.pg import open_postgres

        try:
            return open_postgres(found.location)
        except psycopg.OperationalError as exc:
            raise BadTarget(f"--db {exc}") from exc
    return Store(found.location)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot answer right now (locked, down, restarting,
    out of connections) rather than that a read is wrong: a server answers 503 and the
    reader tries again later.

    SQLite's ``OperationalError``; psycopg's (the pool's time-out is one) and its
    ``InterfaceError`` (a connection closed under the read). psycopg is looked up among
    the modules already imported, never imported here: without it loaded, none of its
    exceptions can have been raised.
    """
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    )


class Stoppable(Protocol):
    def stop(self, timeout: float | None = 10.0) -> None: ...


def listen_for_changes(target: str, changed: Callable[[], object]) -> Stoppable | None:
    """Call ``changed`` whenever another process commits to the store ``target`` names:
    PostgreSQL's ``LISTEN`` (:mod:`stemtrace.store.pg.listen`), started here and stopped by
    the caller; ``None`` for a store that cannot tell (SQLite: watch its last write)."""
    found = parse_target(target)
    if found.kind != "postgresql":
        return None
    from stemtrace.store.pg.listen import Listener

    return Listener(found.location, lambda change: changed()).start()
