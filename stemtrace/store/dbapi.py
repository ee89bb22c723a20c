"""What the reads shared by both backends ask of a connection: ``execute(sql, params)``.

SQLite's connection is one as it is. PostgreSQL's reads pass an adapter that
runs the same SQL in its own dialect (:class:`stemtrace.store.pg.rollup_reads.Lite`),
so a read written once (the rollups, the registry, the error groups) answers
alike on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Executes(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any:
        """A cursor over the rows of ``sql`` (``?`` placeholders), iterable and with
        ``fetchone``, ``fetchall`` and ``description``."""
