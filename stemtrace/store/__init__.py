"""The SQLite store: schema and migrations, the single-writer ingest, read queries."""

from stemtrace.store.schema import Store

__all__ = ["Store"]
