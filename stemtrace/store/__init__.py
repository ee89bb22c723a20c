"""The store: the SQLite backend, and the surface every backend offers.

May import: core only. The rest of stemtrace imports this package and
:mod:`stemtrace.store.surface` only, never the modules behind them.
"""

from stemtrace.store.queries import listed
from stemtrace.store.ranked import SORTS
from stemtrace.store.schema import DEFAULT_DB, Store
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

__all__ = [
    "DEFAULT_DB",
    "FLOW_OUTCOMES",
    "NO_UPKEEP",
    "SORTS",
    "Backend",
    "BadCursor",
    "FlowFilters",
    "IngestResult",
    "Skip",
    "Store",
    "TaskFilters",
    "Upkeep",
    "Writer",
    "listed",
]


def open_store(target: str) -> Backend:
    """The store at ``target``: a SQLite file's path."""
    return Store(target)
