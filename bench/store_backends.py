"""The API on SQLite and on PostgreSQL holding the same tasks, timed side by side (issue 18).

The SQLite store is :mod:`bench.store_queries`' (built through ``Ingestor.ingest``
from :mod:`bench.workload` and cached at ``/tmp/stemtrace-bench-<tasks>.db``,
its text index built and its tasks in flight added); the PostgreSQL store is
its copy, ``stemtrace_bench_<tasks>`` on ``--pg``'s server, made by
:mod:`bench.pg_copy` (bulk ``COPY``, then the indexes, the ``pg_trgm`` index
behind ``q`` among them, and ``VACUUM ANALYZE``) and kept between runs. Both
are built when missing; ``--fresh`` rebuilds both, ``--fresh-pg`` the copy.

Then, on each backend: a heartbeat from the workers in flight and the brokers'
queue counts (:func:`bench.inflight.refresh`, the same numbers on both); the
problems looked for afresh (no cache); one ``python -m stemtrace.cli run
--no-consumer`` server each, both running at once, and ``--requests`` requests
per endpoint (:func:`bench.store_queries.endpoints`, after ``--warmup``), round
robin over the endpoints and alternating which backend goes first, so that
noise hits both alike. Reported per endpoint: median and p95 of each backend
against the targets, issue 18's targets first; each server's resident memory
after the requests (and on PostgreSQL the private memory of its connections'
backends); bytes on disk per task (SQLite's file and its WAL;
``pg_database_size``).

Last, with ``--consumer-events`` (default 20,000; 0 skips it), the peak memory of a
real ``stemtrace consume`` writing those events into each big store in turn
(:mod:`bench.store_consumer`; Redis on ``--host``/``--port``, database ``--db``).

Usage, from the repository root, with PostgreSQL on 127.0.0.1:5432 (user postgres, may
create databases) and Redis on 127.0.0.1:6379::

    python -m bench.store_backends [--tasks 1000000] [--requests 50]
        [--backends sqlite,postgresql] [--fresh | --fresh-pg] [--consumer-events 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

from bench import add_redis_options, inflight, pg_copy, procstat, store_consumer
from bench.capture_overhead import sigterm_as_exit
from bench.store_queries import (
    RSS_TARGET_MB,
    BenchError,
    Server,
    cached,
    describe,
    endpoints,
    generate,
    index,
    p95,
)
from stemtrace.core.thresholds import Thresholds
from stemtrace.server.watch import Watch
from stemtrace.store import BadTarget, open_store

BACKENDS = ("sqlite", "postgresql")
ISSUE_18 = {
    "tasks, first page": ("tasks list", 50),
    "tasks ?name=&state=FAILURE": ("filtered by name and state", 50),
    "task detail (retried)": ("task detail", 20),
    "flow of 10,000 tasks": ("a 10,000-task flow", 300),
    "overview, 24 h": ("overview", 100),
    "overview, 7 d": ("overview", 100),
    "registry": ("registry", 100),
    "registry page": ("registry", 100),
    "tasks ?q=<one old order>": ("rare-text search", 100),
    "tasks ?q=<no match>": ("rare-text search", 100),
}
"""The endpoints issue 18 sets a target for: ``label: (its words, p95 target in ms)``."""


def plan_of(meta: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """:func:`bench.store_queries.endpoints`, and the pages of the task list, the task and
    the flow whose API it times."""
    flow = meta["big_flow"]["root_id"]
    task = meta["samples"].get("retried_id") or flow
    return [*endpoints(meta), ("executions page", "/executions", None),
            ("task page (retried)", f"/tasks/{task}", None),
            ("flow page, 10,000 tasks", f"/flows/{flow}", None)]  # fmt: skip


# -- the stores -----------------------------------------------------------------------


def sqlite_store(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The cached SQLite store (built when missing or ``--fresh``), indexed, topped up."""
    meta = None if args.fresh else cached(path)
    if meta is None:
        print(f"generating {args.tasks} tasks into {path} (bench.store_queries) ...", flush=True)
        meta = generate(path, args.tasks, args.batch)
    else:
        print(f"using cached {path} ({meta['tasks']} tasks)", flush=True)
    meta = index(path, meta)
    meta = inflight.top_up(path, meta)
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def pg_store(
    args: argparse.Namespace, path: Path, meta: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The URL of the PostgreSQL copy of the SQLite store (made when missing or stale) and
    the copy's record."""
    name = pg_copy.database_name(args.tasks)
    with psycopg.connect(args.pg, autocommit=True, connect_timeout=10) as admin:
        record = None if args.fresh or args.fresh_pg else pg_copy.cached(admin, name, meta)
        if record is None:
            print(f"copying {path} into PostgreSQL database {name} ...", flush=True)
            record = pg_copy.build(admin, args.pg, name, path, meta)
            print(f"copied in {record['seconds']:.0f} s", flush=True)
        else:
            print(f"using PostgreSQL database {name} (copied in {record['seconds']:.0f} s; "
                  "--fresh-pg copies again)", flush=True)  # fmt: skip
    return pg_copy.url_of(args.pg, name), record


def with_options(url: str, options: str | None) -> str:
    """``url`` with libpq's ``options`` (``-c jit=off``: settings of its sessions)."""
    return f"{url}?options={quote(options, safe='')}" if options else url


def store_size(target: str) -> int:
    store = open_store(target)
    try:
        return store.size_bytes()
    finally:
        store.close()


def problems_uncached(target: str, limit: int | None, rounds: int = 20) -> list[float]:
    """Milliseconds per look for problems with no cache (the server's watch keeps one 2 s)."""
    store = open_store(target)
    try:
        watch = Watch(store, Thresholds(inflight_limit=limit or Thresholds.inflight_limit))
        watch.current(now=time.time())  # the rollups' usual numbers, read once a minute
        found = []
        for _ in range(rounds):
            began = time.perf_counter()
            watch.current(now=time.time())
            found.append((time.perf_counter() - began) * 1000)
    finally:
        store.close()
    return found


# -- the requests ---------------------------------------------------------------------


def time_requests(
    clients: dict[str, httpx.Client],
    plan: list[tuple[str, str, float | None]],
    args: argparse.Namespace,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per backend and endpoint: the milliseconds of each request, and what came back."""
    found: dict[str, dict[str, dict[str, Any]]] = {
        backend: {label: {"ms": [], "spent": 0.0} for label, _, _ in plan} for backend in clients
    }
    for label, path, _ in plan:  # each endpoint on both at once: what came back compares
        for backend, client in clients.items():
            for _ in range(args.warmup):
                response = _get(client, path)
            entry = found[backend][label]
            entry["bytes"] = len(response.content)
            is_json = response.headers.get("content-type", "").startswith("application/json")
            entry["sample"] = response.json() if is_json else None
    order = list(clients)
    for round_ in range(args.requests):
        for label, path, _ in plan:
            for backend in order if round_ % 2 == 0 else order[::-1]:
                entry = found[backend][label]
                if entry["spent"] > args.budget and len(entry["ms"]) >= 5:
                    continue  # slow enough to have said so; spare the rest of the run
                began = time.perf_counter()
                _get(clients[backend], path)
                elapsed = time.perf_counter() - began
                entry["ms"].append(elapsed * 1000)
                entry["spent"] += elapsed
    return found


def _get(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:
        raise BenchError(f"{client.base_url}{path}: {response.status_code} {response.text[:300]}")
    return response


def backend_memory(url: str) -> dict[str, float]:
    """The backends connected to the database at ``url``: how many, their private memory."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [int(row[0]) for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()")]  # fmt: skip
    found = [procstat.memory(pid) for pid in pids]
    return {"backends": len(found), "RssAnon": sum(m.get("RssAnon", 0.0) for m in found)}


# -- the report -----------------------------------------------------------------------


def _verdict(ms: list[float], target: float | None) -> str:
    return "" if target is None else ("ok" if p95(ms) < target else "SLOW")


def report_requests(
    plan: list[tuple[str, str, float | None]], found: dict[str, dict[str, dict[str, Any]]]
) -> list[str]:
    backends = list(found)
    head = f"{'endpoint':<28} {'target':>6}"
    for backend in backends:
        head += f"  {backend[:10] + ' median':>17} {'p95':>7} {'':<4}"
    lines = [head + "  response"]
    for label, _, target in plan:
        target = ISSUE_18.get(label, (None, target))[1]
        line = f"{label:<28} {'-' if target is None else f'<{target:.0f}':>6}"
        said = []
        for backend in backends:
            entry = found[backend][label]
            ms = entry["ms"]
            line += f"  {statistics.median(ms):17.1f} {p95(ms):7.1f} {_verdict(ms, target):<4}"
            said.append(f"{entry['bytes'] / 1024:.0f} KiB, {describe(label, entry['sample'])}")
        same = len(set(said)) == 1
        line += "  " + (
            said[0] if same else "; ".join(f"{b}: {s}" for b, s in zip(backends, said, strict=True))
        )
        lines.append(line)
    lines.append("(milliseconds, wall time of the HTTP request from this process, interleaved)")
    lines.append("")
    lines.append("issue 18's targets (p95, the slowest of the endpoints that stand for each):")
    for words in dict.fromkeys(words for words, _ in ISSUE_18.values()):
        labels = [label for label, (w, _) in ISSUE_18.items() if w == words]
        target = ISSUE_18[labels[0]][1]
        parts = []
        for backend in backends:
            worst = max(labels, key=lambda label: p95(found[backend][label]["ms"]))
            high = p95(found[backend][worst]["ms"])
            parts.append(f"{backend} {high:6.1f} {'ok' if high < target else 'SLOW':<4} ({worst})")
        lines.append(f"  {words:<27} < {target:<4.0f} " + "   ".join(parts))
    return lines


def report(
    meta: dict[str, Any],
    record: dict[str, Any] | None,
    plan: list[tuple[str, str, float | None]],
    found: dict[str, dict[str, dict[str, Any]]],
    other: dict[str, dict[str, Any]],
) -> str:
    lines = [f"{meta['tasks']:,} tasks generated, {meta['inflight']['tasks']:,} in flight added;"
             f" the same on each backend", ""]  # fmt: skip
    lines += report_requests(plan, found)
    lines.append("")
    for backend, facts in other.items():
        start, after = facts["memory"]["start"], facts["memory"]["after"]
        rss = after["VmRSS"]
        line = (
            f"{backend}: server RSS {start['VmRSS']:.0f} MB after start-up, {rss:.0f} MB after"
            f" the requests (peak {after['VmHWM']:.0f} MB), target < {RSS_TARGET_MB} MB:"
            f" {'ok' if rss < RSS_TARGET_MB else 'ABOVE'}"
        )
        if "backends" in facts:
            pg = facts["backends"]
            line += f"; its {pg['backends']} PostgreSQL backends {pg['RssAnon']:.0f} MB private"
        lines.append(line)
        size, tasks = facts["bytes"], facts["tasks"]
        lines.append(
            f"{backend}: on disk {size / 1e9:.2f} GB for {tasks:,} tasks, {size / tasks:.0f}"
            f" bytes/task; problems found afresh (no cache) median"
            f" {statistics.median(facts['problems']):.1f} ms, p95 {p95(facts['problems']):.1f} ms"
        )
        consumer = facts.get("consumer")
        if consumer:
            memory = consumer["memory"]
            lines.append(
                f"{backend}: a consumer writing {consumer['events']:,} events"
                f" ({consumer['tasks']:,} tasks) into it: peak RSS"
                f" {memory.get('VmHWM', 0):.0f} MB ("
                f"RSS {memory.get('VmRSS', 0):.0f} MB at the end),"
                f" {consumer['seconds']:.1f} s,"
                f" {consumer['events'] / consumer['seconds']:.0f} events/s"
            )
    if record is not None:
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in record["steps"].items() if v >= 1)
        lines.append(f"postgresql: copied from SQLite in {record['seconds']:.0f} s ({steps})")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_backends",
        description="API latency, disk and memory on SQLite and PostgreSQL, the same tasks.",
    )
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the store")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first")
    parser.add_argument("--batch", type=int, default=5000, help="events per ingest batch")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="stop timing an endpoint on a backend after this many seconds"
                             " (and at least 5 requests)")  # fmt: skip
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="which to serve, comma-separated (default: both)")  # fmt: skip
    parser.add_argument("--sqlite", type=Path,
                        help="the SQLite store (default /tmp/stemtrace-bench-N.db)")  # fmt: skip
    parser.add_argument("--pg", default=pg_copy.ADMIN_URL,
                        help="a PostgreSQL database to make the copy from")  # fmt: skip
    parser.add_argument("--pg-options", metavar="OPTIONS",
                        help="settings of the PostgreSQL sessions, e.g. '-c jit=off'"
                             " (libpq's options, in the URL served)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rebuild both stores")
    parser.add_argument("--fresh-pg", action="store_true", help="copy into PostgreSQL again")
    parser.add_argument("--problems-read", type=int, metavar="N",
                        help="the servers' --problem-inflight-limit")  # fmt: skip
    parser.add_argument("--consumer-events", type=int, default=20_000,
                        help="events a consumer writes into each store, for its memory;"
                             " 0: no consumer")  # fmt: skip
    add_redis_options(parser, db_help="Redis database for the consumer's stream")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or set(args.backends) - set(BACKENDS):
        parser.error(f"--backends: one or both of {', '.join(BACKENDS)}")
    if args.tasks < 20_000:
        parser.error("need --tasks >= 20000 (the store holds a flow of 10,000 tasks)")
    if args.requests < 1 or args.warmup < 1 or args.batch < 1 or args.consumer_events < 0:
        parser.error("need --requests, --warmup and --batch >= 1, --consumer-events >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.sqlite or Path(tempfile.gettempdir()) / f"stemtrace-bench-{args.tasks}.db"
    servers: dict[str, Server] = {}
    logs: list[Path] = []
    try:
        with sigterm_as_exit():
            meta = sqlite_store(args, path)
            targets = {"sqlite": str(path)} if "sqlite" in args.backends else {}
            record = None
            if "postgresql" in args.backends:
                url, record = pg_store(args, path, meta)
                targets["postgresql"] = with_options(url, args.pg_options)
            now = time.time()
            other: dict[str, dict[str, Any]] = {}
            for backend, target in targets.items():
                inflight.refresh(target, now)
                other[backend] = {"problems": problems_uncached(target, args.problems_read)}
            limit = args.problems_read
            extra = ("--problem-inflight-limit", str(limit)) if limit else ()
            for backend, target in targets.items():
                logs.append(Path(tempfile.mkstemp(prefix=f"bench-{backend}-server-")[1]))
                servers[backend] = Server(target, logs[-1], extra=extra)  # type: ignore[arg-type]
            plan = plan_of(meta)
            clients = {b: httpx.Client(base_url=s.url, timeout=120) for b, s in servers.items()}
            try:
                for backend, server in servers.items():
                    server.wait_ready(clients[backend])
                    other[backend]["memory"] = {"start": server.memory_mb()}
                print(f"servers {', '.join(f'{b} {s.url}' for b, s in servers.items())};"
                      f" {args.warmup} warm-up + {args.requests} timed requests per endpoint,"
                      " interleaved", flush=True)  # fmt: skip
                found = time_requests(clients, plan, args)
                for backend, server in servers.items():
                    other[backend]["memory"]["after"] = server.memory_mb()
                if "postgresql" in targets:
                    other["postgresql"]["backends"] = backend_memory(targets["postgresql"])
            finally:
                for client in clients.values():
                    client.close()
                for server in servers.values():
                    server.stop()
            for backend, target in targets.items():
                other[backend]["bytes"] = store_size(target)
                other[backend]["tasks"] = count_tasks(target)
            if args.consumer_events:
                print(f"a consumer writes {args.consumer_events} events into each ...", flush=True)
                for backend, run in store_consumer.runs(args, targets).items():
                    other[backend]["consumer"] = run
    except (BenchError, BadTarget, pg_copy.CopyError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for log in logs:
        log.unlink(missing_ok=True)
    print()
    print(report(meta, record, plan, found, other))
    return 0


def count_tasks(target: str) -> int:
    if target.startswith("postgresql://"):
        with psycopg.connect(target) as conn:
            row = conn.execute("SELECT count(*) FROM tasks").fetchone()
    else:
        with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as lite:
            row = lite.execute("SELECT count(*) FROM tasks").fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    sys.exit(main())
