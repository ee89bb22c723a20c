"""The PostgreSQL twin of a cached SQLite bench store: the same tasks, copied in bulk.

:mod:`bench.store_backends` times the API on both backends holding the same
data. Ingesting ten million tasks again through the PostgreSQL writer would
take a day on this machine, so the database is copied from the cached SQLite
store of :mod:`bench.store_queries` (``/tmp/stemtrace-bench-<N>.db``) into a
database of its own, ``stemtrace_bench_<N>``, kept between runs:

1. the database is made empty and opened once with
   :class:`~stemtrace.store.pg.store.PgStore`, which migrates it: the schema is
   whatever the code holds today (partitioned by day or not);
2. every table both stores have is emptied (a migration may have seeded a row)
   and stripped of its indexes and unique keys, then filled by ``COPY ... FROM
   STDIN``, one transaction per table, in the columns both have (SQLite's
   implicit ``rowid`` fills PostgreSQL's ``tasks.rowid``, which history,
   planned ids and the rollups' ``task_tally`` name tasks by). The rollups and
   digests are SQLite's own rows: the same tables, counted by the same Python
   (:mod:`stemtrace.store.tally`) while the store was ingested (a histogram's
   packed counts become a ``bigint[]``);
3. what SQLite has no column for is made as a consumer keeping up with the
   events would have written it: ``history.written_at``, the time of writing,
   is the latest event time among the row's records (a batch is written a
   moment after its events); a task's ``day`` (and its ``task_tally`` row's) is
   that of its first history row, else of its last write, as migration m005
   reckons it (:mod:`stemtrace.store.pg.schema`). So the five days of the
   workload land in their own day partitions, which are made first
   (:func:`stemtrace.store.pg.days.make_partitions`), as in a live store;
4. the indexes and keys are made again (the ``pg_trgm`` index behind ``q``
   among them: what ingest would have built), the identities go on from the
   largest value copied, ``tasks_day`` holds the newest day, and ``VACUUM
   ANALYZE`` leaves the tables as autovacuum would have (statistics, and the
   visibility map that index-only scans need).

The database's comment records what it was copied from (the SQLite store's
generator version, tasks and build time), the migrations and how long each step
took; a copy is made again with ``--fresh-pg``, when the SQLite store was rebuilt,
when the code has a migration the copy lacks, or when a copy was cut short (the
comment is written last). Text holding a NUL (which PostgreSQL's text cannot hold,
and the bench workload never makes) fails the copy.
"""

from __future__ import annotations

import array
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from bench.workload import GENERATOR_VERSION
from stemtrace.core import buckets
from stemtrace.store.pg.schema import MIGRATIONS
from stemtrace.store.pg.store import PgStore

try:
    from stemtrace.store.pg.days import DAILY, DAY, make_partitions
except ImportError:  # a schema before m005: history alone is partitioned by day
    from stemtrace.store.pg.schema import DAY, ensure_day  # type: ignore[attr-defined,no-redef]

    DAILY = ("history",)

    def make_partitions(conn: Any, day: int, tables: tuple[str, ...] = DAILY) -> None:
        ensure_day(conn, day)


COPY_VERSION = 1
"""Bumped when the copy changes what it writes: older copies are made again."""
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FETCH = 20_000
"""Rows read from SQLite at a time."""
SETTINGS = ("SET maintenance_work_mem = '1GB'", "SET synchronous_commit = off")
"""This session's settings while copying: room to sort index builds, no wait for the WAL."""
WRITTEN_AT = (
    "coalesce((SELECT max(json_extract(r.value, '$[2]')) FROM json_each(h.events) AS r),"
    " (SELECT t.updated_at FROM tasks AS t WHERE t.rowid = h.task_rowid))"
)
"""SQLite's expression of a history row's time of writing: its records' latest ``ts``
(``ts`` is a record's third field, :data:`stemtrace.store.migrations.HISTORY_RECORD`)."""
FIRST = ("history", "tasks")
"""Copied before the rest, in this order: history gives each task its day."""

Conn = psycopg.Connection[tuple[Any, ...]]


class CopyError(RuntimeError):
    pass


def database_name(tasks: int) -> str:
    return f"stemtrace_bench_{tasks}"


def url_of(admin_url: str, name: str) -> str:
    """The ``postgresql://`` URL of database ``name`` on the server of ``admin_url``."""
    found = psycopg.conninfo.conninfo_to_dict(admin_url)
    user = quote(str(found.get("user") or "postgres"), safe="")
    if found.get("password"):
        user += ":" + quote(str(found["password"]), safe="")
    host, port = found.get("host") or "127.0.0.1", found.get("port") or 5432
    return f"postgresql://{user}@{host}:{port}/{quote(name, safe='')}"


def source_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What a copy of the SQLite store ``meta`` describes must have been made from."""
    return {
        "copy_version": COPY_VERSION,
        "generator": GENERATOR_VERSION,
        "tasks": meta["tasks"],
        "last_ts": meta["last_ts"],
        "inflight_at": (meta.get("inflight") or {}).get("at"),
        "migrations": [name for name, _ in MIGRATIONS],
    }


def cached(admin: Conn, name: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The copy's record, when database ``name`` is a whole copy of the store ``meta``
    describes under the current schema; else ``None``."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None or not row[0]:
        return None
    try:
        record: dict[str, Any] = json.loads(row[0])
    except ValueError:
        return None
    return record if record.get("source") == source_of(meta) else None


def build(
    admin: Conn, admin_url: str, name: str, sqlite_path: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Make database ``name`` (on the server of ``admin``, at ``admin_url``) a copy of the
    SQLite store at ``sqlite_path``, which ``meta`` describes; the copy's record."""
    began = time.perf_counter()
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_of(admin_url, name)
    PgStore(url).close()  # the schema, migrated as a server would
    steps: dict[str, float] = {}
    rows: dict[str, int] = {}
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for setting in SETTINGS:
                conn.execute(setting)
            tables = shared_tables(source, conn)
            keys = strip(conn, list(tables))
            days = make_days(conn, source)
            steps["partitions"] = time.perf_counter() - began
            copier = Copier(source, conn, tables)
            for table in [*FIRST, *sorted(set(tables) - set(FIRST))]:
                if table in tables:
                    mark = time.perf_counter()
                    rows[table] = copier.copy(table)
                    steps[f"copy {table}"] = time.perf_counter() - mark
                    print(f"  copied {table}: {rows[table]} rows in "
                          f"{steps[f'copy {table}']:.0f} s", flush=True)  # fmt: skip
            for what, statement in keys:
                mark = time.perf_counter()
                conn.execute(statement)
                steps[what] = time.perf_counter() - mark
                if steps[what] >= 1:
                    print(f"  {what}: {steps[what]:.0f} s", flush=True)
            finish(conn, tables, copier.newest_day)
            mark = time.perf_counter()
            conn.execute("VACUUM (ANALYZE)")
            steps["vacuum analyze"] = time.perf_counter() - mark
            size = _one(conn, "SELECT pg_database_size(current_database())")
    finally:
        source.close()
    record = {
        "source": source_of(meta),
        "rows": rows,
        "days": days,
        "seconds": round(time.perf_counter() - began, 1),
        "steps": {key: round(value, 1) for key, value in steps.items()},
        "bytes": size,
    }
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(name), sql.Literal(json.dumps(record))
        )
    )
    return record


# -- the steps ------------------------------------------------------------------------


def shared_tables(source: sqlite3.Connection, conn: Conn) -> dict[str, list[str]]:
    """Each table both stores have (PostgreSQL's partitions apart): its PostgreSQL
    columns, in order."""
    in_sqlite = {
        str(row[0]) for row in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    found: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT c.relname, a.attname FROM pg_class AS c"
        " JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p')"
        " AND NOT c.relispartition ORDER BY c.relname, a.attnum"
    ):
        if table in in_sqlite:
            found.setdefault(str(table), []).append(str(column))
    return found


def strip(conn: Conn, tables: list[str]) -> list[tuple[str, str]]:
    """Empty ``tables`` and drop their indexes and unique keys; ``(what, statement)`` that
    make them again, the keys first."""
    keys: list[tuple[str, str]] = []
    indexes: list[tuple[str, str]] = []
    for table in tables:
        ident = sql.Identifier(table).as_string(conn)
        for constraint, definition in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype IN ('p', 'u') AND conparentid = 0",
            (ident,),
        ).fetchall():
            name = sql.Identifier(constraint).as_string(conn)
            keys.append(
                (f"key {constraint}", f"ALTER TABLE {ident} ADD CONSTRAINT {name} {definition}")
            )
            conn.execute(f"ALTER TABLE {ident} DROP CONSTRAINT {name}")
        for index, definition in conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid AND NOT c.relispartition"
            " WHERE i.indrelid = %s::regclass",
            (ident,),
        ).fetchall():
            # a partitioned table's reads "ON ONLY": made again, it must cover the partitions
            indexes.append((f"index {index}", str(definition).replace(" ON ONLY ", " ON ", 1)))
            conn.execute(f"DROP INDEX {index}")
        conn.execute(f"TRUNCATE {ident}")
    return keys + indexes


def partitioned(conn: Conn) -> set[str]:
    """The tables partitioned by day (of :data:`stemtrace.store.pg.days.DAILY`) in this schema."""
    return {
        str(row[0])
        for row in conn.execute(
            "SELECT c.relname FROM pg_partitioned_table AS p JOIN pg_class AS c"
            " ON c.oid = p.partrelid WHERE c.relname = ANY(%s)"
            " AND c.relnamespace = to_regnamespace(current_schema())",
            (list(DAILY),),
        )
    }


def make_days(conn: Conn, source: sqlite3.Connection) -> list[int]:
    """The day partitions of every day a copied row can fall in: from the first task's first
    sight to tomorrow (nothing was written later than now)."""
    tables = tuple(sorted(partitioned(conn)))
    first = source.execute("SELECT min(seen_at) FROM tasks").fetchone()[0]
    if not tables or first is None:
        return []
    days = list(range(math.floor(first / DAY), math.floor(time.time() / DAY) + 2))
    with conn.transaction():
        for day in days:
            make_partitions(conn, day, tables)
    return days


class Copier:
    """Copies one table at a time; remembers each task's day between tables."""

    def __init__(
        self, source: sqlite3.Connection, conn: Conn, tables: dict[str, list[str]]
    ) -> None:
        self.source = source
        self.conn = conn
        self.tables = tables
        top = source.execute("SELECT max(rowid) FROM tasks").fetchone()[0] or 0
        self.first_written = array.array("d", bytes(8 * (top + 1)))
        """Per task rowid: when its first history row was written (0: none)."""
        self.day = array.array("i", bytes(4 * (top + 1)))
        """Per task rowid: its day (once ``tasks`` is copied)."""
        self.newest_day = 0
        in_sqlite = {name: set(_sqlite_columns(source, name)) for name in tables}
        self.columns = {  # a day last: the rows read from SQLite get it appended
            name: sorted(
                (c for c in columns if c in in_sqlite[name] or self.made(name, c)),
                key=lambda c: c == "day",
            )
            for name, columns in tables.items()
        }

    @staticmethod
    def made(table: str, column: str) -> bool:
        """Whether the copy makes ``column`` of ``table`` (SQLite has none)."""
        return (table, column) in {("tasks", "rowid"), ("history", "written_at"),
                                   ("tasks", "day"), ("task_tally", "day")}  # fmt: skip

    def copy(self, table: str) -> int:
        columns = self.columns[table]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        count = 0
        try:
            with (
                self.conn.transaction(),
                self.conn.cursor() as cursor,
                cursor.copy(statement) as copy,
            ):
                for row in self.rows(table, columns):
                    copy.write_row(row)
                    count += 1
        except psycopg.Error as exc:
            raise CopyError(f"copying {table} ({', '.join(columns)}): {exc}") from exc
        return count

    def rows(self, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        if table == "history":
            return self._history(columns)
        if table == "tasks" and "day" in columns:
            return self._tasks(columns)
        if table == "task_tally" and "day" in columns:
            return self._with_day(table, columns, "task_rowid")
        if table == "rollup_hist":
            return self._histograms(columns)
        return self._select(table, columns)

    def _histograms(self, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        """``rollup_hist``: SQLite's packed counts as PostgreSQL's ``bigint[]``."""
        at = columns.index("counts")
        for row in self._select("rollup_hist", columns):
            yield (*row[:at], buckets.unpack(row[at]), *row[at + 1 :])

    def _select(self, table: str, columns: list[str], order: str = "") -> Iterator[tuple[Any, ...]]:
        listed = ", ".join(_quoted(c) for c in columns)
        cursor = self.source.execute(f"SELECT {listed} FROM {_quoted(table)} {order}")
        while batch := cursor.fetchmany(FETCH):
            yield from batch

    def _history(self, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        picked = ", ".join(WRITTEN_AT if c == "written_at" else f"h.{_quoted(c)}" for c in columns)
        at = columns.index("task_rowid"), columns.index("written_at")
        first = self.first_written
        cursor = self.source.execute(f"SELECT {picked} FROM history AS h ORDER BY h.rowid")
        while batch := cursor.fetchmany(FETCH):
            for row in batch:
                rowid, written = row[at[0]], row[at[1]]
                if 0 <= rowid < len(first) and (first[rowid] == 0 or written < first[rowid]):
                    first[rowid] = written
            yield from batch

    def _tasks(self, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        plain = [c for c in columns if c != "day"]
        at_rowid, at_updated = plain.index("rowid"), plain.index("updated_at")
        first, day = self.first_written, self.day
        for row in self._select("tasks", plain, "ORDER BY rowid"):
            rowid = row[at_rowid]
            found = math.floor((first[rowid] or row[at_updated]) / DAY)
            day[rowid] = found
            self.newest_day = max(self.newest_day, found)
            yield (*row, found)

    def _with_day(self, table: str, columns: list[str], key: str) -> Iterator[tuple[Any, ...]]:
        plain = [c for c in columns if c != "day"]
        at_key = plain.index(key)
        day = self.day
        for row in self._select(table, plain):
            yield (*row, day[row[at_key]])


def finish(conn: Conn, tables: dict[str, list[str]], newest_day: int) -> None:
    """Identities on from the largest value copied; ``tasks_day`` at the newest day."""
    for table, column in conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute AS a JOIN pg_class AS c"
        " ON c.oid = a.attrelid WHERE a.attidentity <> '' AND c.relname = ANY(%s)"
        " AND NOT c.relispartition AND c.relnamespace = to_regnamespace(current_schema())",
        (list(tables),),
    ).fetchall():
        conn.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence({}, {}), max({})) FROM {}"
                    " HAVING max({}) IS NOT NULL").format(
                sql.Literal(table), sql.Literal(column), sql.Identifier(column),
                sql.Identifier(table), sql.Identifier(column),
            )
        )  # fmt: skip
    if _one(conn, "SELECT to_regclass('tasks_day')") is not None:
        conn.execute("UPDATE tasks_day SET day = greatest(day, %s)", (newest_day,))


def _one(conn: Conn, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _sqlite_columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in source.execute(f"PRAGMA table_info({_quoted(table)})")]


def _quoted(name: str) -> str:
    """A SQLite identifier (``rowid`` bare: quoted, it would name a column of that name)."""
    return name if name == "rowid" else '"' + name.replace('"', '""') + '"'
