"""PostgreSQL as the store (``--db postgresql://...``), through psycopg 3 and its pool.

Imported only when a ``postgresql://`` target is opened, so that SQLite's users
need neither psycopg nor this package. :mod:`~stemtrace.store.pg.schema` holds
the migrations and the day partitions, :mod:`~stemtrace.store.pg.writer` the
writer (SQLite's merge rules, shared through :mod:`stemtrace.store.ingest`),
:mod:`~stemtrace.store.pg.store` the pool, :mod:`~stemtrace.store.pg.listen` the
notifications of committed batches (live updates on servers that run no consumer).
"""

from stemtrace.store.pg.store import PgStore, open_postgres
from stemtrace.store.pg.writer import PgWriter, is_transient

__all__ = ["PgStore", "PgWriter", "is_transient", "open_postgres"]
