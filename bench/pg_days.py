"""What writing tasks into day partitions costs PostgreSQL's writer, side by side with a tree
that did not (migration m005, :mod:`stemtrace.store.pg.days`).

Each tree named by ``--trees`` (``label=path``: a checkout whose ``stemtrace`` and
``bench`` a child process imports, through ``PYTHONPATH``) writes the same events
into a fresh database of its own, in rounds whose order rotates so that noise
hits each alike:

* first ``--days`` earlier days of ``--per-day`` events each, written by a writer
  whose clock says that day (so that a lookup by id reads that many days' indexes,
  as in a store that keeps a week), and as many today (``--fresh-day``: none, so that
  the timed events open the day's partitions, not analyzed yet, as in a day's first
  minutes); then ``VACUUM ANALYZE`` (as autovacuum would have done by then: a day's
  partition is analyzed within minutes of its first rows);
* then, timed, ``--events`` events of :mod:`bench.workload` in batches of ``--batch``
  through :meth:`PgWriter.ingest`, today: the wall clock, the child's CPU seconds and
  the CPU seconds of the database's backends (``/proc``, :mod:`bench.procstat`).

Prints each round, then per tree the median of each figure and its ratio to the
first tree's. The events are the same in every run (``Workload`` with a fixed seed).

Usage, from the repository root, with PostgreSQL on 127.0.0.1:5432::

    mkdir /tmp/before && git archive <commit before> | tar -x -C /tmp/before
    python -m bench.pg_days --trees before=/tmp/before,after=. [--events 200000]
        [--days 7] [--per-day 20000] [--batch 500] [--rounds 3] [--fresh-day]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DAY = 86400


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run, in the tree on ``PYTHONPATH``: a fresh database, filled, timed, dropped."""
    import itertools

    import psycopg
    from psycopg import sql

    import stemtrace
    from bench import procstat
    from bench.workload import Workload
    from stemtrace.store.pg import PgStore
    from stemtrace.store.pg import writer as pg_writer

    name = f"stemtrace_bench_days_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = args.pg.rsplit("/", 1)[0] + "/" + name
    real = time.time
    try:
        store = PgStore(url)
        now = real()
        for back in range(args.days, 0 if args.fresh_day else -1, -1):  # and today
            then = now - back * DAY
            pg_writer.time = types.SimpleNamespace(time=lambda then=then: then)  # type: ignore[assignment]
            events = list(
                itertools.islice(
                    Workload(start=then - 3600, rate=300, seed=100 + back).events(), args.per_day
                )
            )
            write(store, events, args.batch)
        pg_writer.time = types.SimpleNamespace(time=real)  # type: ignore[assignment]
        events = list(
            itertools.islice(Workload(start=now - 600, rate=300, seed=7).events(), args.events)
        )
        with store.connection() as conn:
            conn.execute("VACUUM ANALYZE")
            backends = lambda: [  # noqa: E731
                int(pid)
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchall()
            ]
            before = procstat.usages(backends())
        cpu, wall = time.process_time(), time.perf_counter()
        write(store, events, args.batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with store.connection() as conn:
            after = procstat.usages(backends())
            tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()
        store.close()
        return {
            "tree": str(Path(stemtrace.__file__).parent.parent),
            "wall": wall,
            "client_cpu": cpu,
            "backend_cpu": procstat.used_since(before, after).cpu,
            "events_per_s": len(events) / wall,
            "tasks": tasks[0] if tasks else 0,
        }
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


def write(store: Any, events: list[Any], batch: int) -> None:
    writer = store.open_writer()
    for start in range(0, len(events), batch):
        writer.ingest(events[start : start + batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--trees", default="before=/tmp/before,after=.")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--per-day", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fresh-day",
        action="store_true",
        help="nothing written today before the timed events: they open the day's partitions"
        " (not analyzed yet, as in the first minutes of a day)",
    )
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    trees = [tuple(item.split("=", 1)) for item in args.trees.split(",")]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    script = Path(__file__).resolve()
    for round_no in range(args.rounds):
        order = trees[round_no % len(trees) :] + trees[: round_no % len(trees)]
        for label, path in order:
            env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
            command = [sys.executable, str(script), "--child", *_passed(args)]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            results[label].append(found)
            print(f"round {round_no + 1} {label}: {json.dumps(found)}", flush=True)
    first = trees[0][0]
    figures = ("events_per_s", "wall", "client_cpu", "backend_cpu")
    medians = {
        label: {f: statistics.median(r[f] for r in runs) for f in figures}
        for label, runs in results.items()
    }
    fresh = ", a fresh day" if args.fresh_day else ""
    print(f"\nmedians of {args.rounds} rounds, {args.events} events after {args.days} days{fresh}:")
    for label, values in medians.items():
        ratios = ", ".join(
            f"{f} {values[f]:.2f} ({values[f] / medians[first][f]:.3f}x)" for f in figures
        )
        print(f"  {label}: {ratios}")


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        f"--events={args.events}", f"--days={args.days}", f"--per-day={args.per_day}",
        f"--batch={args.batch}", f"--pg={args.pg}", *(["--fresh-day"] if args.fresh_day else []),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
