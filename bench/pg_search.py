"""PostgreSQL's ``q``: what its trigram index costs ingestion, and how fast a text is found.

Two parts (``--parts``), each on fresh databases of its own (``CREATE DATABASE`` on
``--pg``, dropped afterwards):

* ``ingest``: ``--events`` events of :mod:`bench.workload` written in batches of 500
  by :class:`~stemtrace.store.pg.writer.PgWriter` (no transport: the writer alone),
  into a database with the index as migrated (``settled``: the tasks not in flight,
  :mod:`stemtrace.store.pg.search`), without it (``none``), and with the same index
  over every task (``every``), in rounds whose order rotates. Timed: the wall clock of
  the writes, and the CPU seconds of the one PostgreSQL backend that made them (a pool
  of one connection; read from ``/proc``, so the server must run on this machine),
  including a ``VACUUM`` of ``tasks`` after them, which merges what GIN's pending list
  still holds. Printed: medians, and each one's ratio to ``none``.
* ``search``: ``--tasks`` synthetic tasks (six names, an ``ord-NNNNNNNN`` argument and a
  customer id each, one in 13 failed with a time-out, the newest 3,000 in flight) put
  in with one ``INSERT``; then m004's index and statistics are made, timed (what the
  migration costs a store that holds that many tasks); then each text of
  :data:`TEXTS` is searched through the store (the first page of 50, median of 5) and
  its plan said: through the index or reading the newest tasks first.

Usage, from the repository root (in a checkout others are editing, from a snapshot:
``git archive HEAD | tar -x -C DIR``)::

    python -m bench.pg_search [--events 40000] [--rounds 5] [--tasks 1000000]
        [--parts ingest,search] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from bench.procstat import usage
from bench.workload import Event, Workload, frames
from stemtrace.store.pg import PgStore, reads, search
from stemtrace.store.queries import TaskFilters
from stemtrace.store.search import TEXT_COLUMNS

VARIANTS = ("none", "settled", "every")
IN_FLIGHT = 3000


def texts(tasks: int) -> dict[str, str]:
    """What the search part looks for: rare, absent, common, short."""
    middle = tasks // 2
    return {
        "rare argument": f"ord-{middle:08d}",
        "rare id": str(uuid.UUID(hashlib.md5(str(middle + 1).encode()).hexdigest()))[:13],
        "rare customer": "cus_" + hashlib.md5(str(3 * (middle + 2)).encode()).hexdigest()[:10],
        "rare, in failures": "10.0.17.7",
        "found nowhere": "zzqqxx",
        "a sixth of tasks": "send_email",
        "one in 13": "timed out",
        "one in 13, caps": "TIMEOUTERROR",
        "two letters": "ab",
    }


@contextmanager
def database(admin: psycopg.Connection[tuple[object, ...]], base: str) -> Iterator[str]:
    name = f"stemtrace_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(base, dbname=name)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        admin.execute(drop.format(sql.Identifier(name)))


def ingest_once(url: str, variant: str, batches: list[list[Event]]) -> tuple[float, float]:
    """``(seconds, backend CPU seconds)`` of writing ``batches`` with the index ``variant``."""
    store = PgStore(url, pool_size=1)
    try:
        with store.connection() as conn:
            if variant != "settled":
                conn.execute(f"DROP INDEX {search.INDEX}")
            if variant == "every":  # the same index, without its condition
                conn.execute(search.CREATE_INDEX.split(" WHERE ")[0])
            pid = conn.info.backend_pid
        writer = store.open_writer()
        before, start = usage(pid), time.perf_counter()
        for batch in batches:
            writer.ingest(batch)
        seconds = time.perf_counter() - start
        with store.connection() as conn:
            assert conn.info.backend_pid == pid, "a pool of one connection"
            conn.execute("VACUUM tasks")
        return seconds, (usage(pid) - before).cpu
    finally:
        store.close()


def ingest_part(args: argparse.Namespace, admin: psycopg.Connection[tuple[object, ...]]) -> None:
    workload = Workload(start=time.time() - args.events / 1500, rate=300)
    events = list(itertools.islice(workload.events(), args.events))
    batches = list(frames(events, 500))
    found: dict[str, list[tuple[float, float]]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.rounds):
        order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
        for variant in order:
            with database(admin, args.pg) as url:
                seconds, used = ingest_once(url, variant, batches)
            found[variant].append((seconds, used))
            print(
                f"round {round_} {variant:8s} {args.events / seconds:8,.0f} events/s,"
                f" backend CPU {used:6.2f} s",
                flush=True,
            )
    rate = {v: statistics.median(args.events / s for s, _ in runs) for v, runs in found.items()}
    cpu = {v: statistics.median(c for _, c in runs) for v, runs in found.items()}
    for variant in VARIANTS:
        fast, busy = rate[variant] / rate["none"], cpu[variant] / cpu["none"]
        print(
            f"{variant:8s} median {rate[variant]:8,.0f} events/s ({fast:.2f} of none),"
            f" backend CPU {cpu[variant]:6.2f} s ({busy:.2f} of none) for {args.events:,} events"
        )


SYNTHETIC = """
INSERT INTO tasks (id, name, state, state_attempt, state_rank, state_ts, args, kwargs,
                   exc_type, exc_message, seen_at, updated_at, runtime{day})
SELECT md5(g::text)::uuid::text,
  'proj.tasks.' || (ARRAY['send_email', 'charge_card', 'resize_image', 'sync_account',
                          'build_report', 'notify'])[1 + mod(g, 6)],
  CASE WHEN g > %(settled)s THEN (ARRAY['PENDING', 'RECEIVED', 'STARTED'])[1 + mod(g, 3)]
       WHEN mod(g, 13) = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
  0, 0, %(t0)s + g * 0.01,
  '[' || mod(g::bigint * 7919, 10000000) || ',"ord-' || lpad(g::text, 8, '0') || '"]',
  '{{"customer_id":"cus_' || substr(md5((g * 3)::text), 1, 10) || '","priority":"'
    || (ARRAY['normal', 'normal', 'high', 'low'])[1 + mod(g, 4)] || '"}}',
  CASE WHEN mod(g, 13) = 0 AND g <= %(settled)s THEN 'TimeoutError' END,
  CASE WHEN mod(g, 13) = 0 AND g <= %(settled)s
       THEN 'timed out after 30s talking to 10.0.' || mod(g, 250) || '.7' END,
  %(t0)s + g * 0.01, %(t0)s + g * 0.01, CASE WHEN g <= %(settled)s THEN 0.1 END{day_value}
FROM generate_series(1, %(tasks)s) AS g
"""


def search_part(args: argparse.Namespace, admin: psycopg.Connection[tuple[object, ...]]) -> None:
    with database(admin, args.pg) as url:
        store = PgStore(url)
        try:
            with store.connection() as conn:
                conn.execute(f"DROP INDEX {search.INDEX}")
                for column in TEXT_COLUMNS:
                    conn.execute(f"DROP STATISTICS IF EXISTS tasks_text_{column}")
                day = conn.execute(  # tasks partitioned by day: into the one writers use
                    "SELECT 1 FROM information_schema.columns"
                    " WHERE table_name = 'tasks' AND column_name = 'day'"
                ).fetchone()
                into = (", day", ", (SELECT day FROM tasks_day)") if day else ("", "")
                filled = SYNTHETIC.format(day=into[0], day_value=into[1])
                if day:  # the writer makes the day's partitions with its first tasks
                    workload = Workload(start=time.time(), rate=300)
                    store.open_writer().ingest(list(itertools.islice(workload.events(), 20)))
                start = time.perf_counter()
                conn.execute(
                    filled,
                    {
                        "tasks": args.tasks,
                        "settled": args.tasks - IN_FLIGHT,
                        "t0": time.time() - args.tasks / 100,
                    },
                )
                conn.execute("VACUUM ANALYZE tasks")
                print(f"{args.tasks:,} tasks put in: {time.perf_counter() - start:.1f} s")
                start = time.perf_counter()
                conn.execute(search.CREATE_INDEX)
                for statement in search.STATISTICS:
                    conn.execute(statement)
                conn.execute("ANALYZE tasks")
                size = conn.execute(
                    "SELECT pg_size_pretty(pg_total_relation_size('tasks')),"
                    f" pg_size_pretty(pg_relation_size('{search.INDEX}'))"
                ).fetchone()
                print(
                    f"m004 on them (index, statistics, ANALYZE):"
                    f" {time.perf_counter() - start:.1f} s; tasks {size[0] if size else '?'}"
                    f" with indexes, the trigram index {size[1] if size else '?'}"
                )
            for label, q in texts(args.tasks).items():
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    rows, _ = store.list_tasks(TaskFilters(q=q), None, 50)
                    times.append((time.perf_counter() - start) * 1000)
                with store.connection() as conn:
                    query, params = reads._searched(TaskFilters(q=q), None, 50)
                    plan = conn.execute("EXPLAIN " + reads._pg(query), params).fetchall()
                way = (
                    "index" if any(search.INDEX in str(row[0]) for row in plan) else "newest first"
                )
                median = statistics.median(times)
                print(
                    f"{label:18s} q={q!r:18s} {len(rows):3d} rows {median:8.1f} ms"
                    f" (max {max(times):7.1f}) {way}",
                    flush=True,
                )
        finally:
            store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=40_000, help="events per ingest run")
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks searched")
    parser.add_argument("--parts", default="ingest,search", help="ingest, search or both")
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where this user may create databases",
    )
    args = parser.parse_args(argv)
    with psycopg.connect(args.pg, autocommit=True) as admin:
        print(f"PostgreSQL {admin.info.server_version}; {time.strftime('%Y-%m-%d %H:%M')}")
        parts = args.parts.split(",")
        if "ingest" in parts:
            ingest_part(args, admin)
        if "search" in parts:
            search_part(args, admin)


if __name__ == "__main__":
    main()
