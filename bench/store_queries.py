"""API latency on a big store: a million tasks, the real server, timed HTTP requests.

The store is filled through the real ingest path (``Ingestor.ingest`` in
batches of ``--batch`` events) from :mod:`bench.workload`: about twenty task
names on four workers over five days, mostly successes, some failures,
retries, revocations and tasks left ``STARTED``/``RECEIVED``/``RETRY``, trace
ids, chains, groups, chords, and one flow of 10,000 tasks (a root that spawns
a chord of 9,998 members and its callback). Redis is skipped here to save
time; ``bench/ingest.py`` measures the consumer. The database is cached under
``/tmp/stemtrace-bench-<tasks>.db`` (with a ``.json`` of the ids to query)
and rebuilt with ``--fresh`` or when the generator changed. Before timing,
the search indexer (``SearchIndexer.step``, as the consumer runs it once
caught up) indexes every task, and the time it took and the bytes the index
added are reported (kept in the ``.json`` for later runs on the same file).

Then ``python -m stemtrace.cli run --no-consumer`` serves it on a free port;
``--requests`` requests per endpoint (after ``--warmup``), interleaved round
robin so that noise hits every endpoint alike, each timed with httpx from
this process. Reported: median and p95 per endpoint against the targets, the
server's resident memory after the requests, and bytes on disk per task.

Usage, from the repository root::

    python -m bench.store_queries [--tasks 1000000] [--requests 50] [--fresh]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bench import inflight
from bench.capture_overhead import sigterm_as_exit, tail
from bench.workload import GENERATOR_VERSION, Workload, frames
from stemtrace.core.thresholds import Thresholds
from stemtrace.server.watch import Watch
from stemtrace.store import Store, Upkeep
from stemtrace.store.ingest import Ingestor
from stemtrace.store.search import SearchIndexer

ROOT = Path(__file__).resolve().parent.parent
DAYS = 5.0
TASKS_PER_UNIT = 1.74  # tasks per unit of work in bench.workload, measured
RSS_TARGET_MB = 250
NAME = "shop.orders.process_order"
FAILING_NAME = "shop.webhooks.deliver"


class BenchError(RuntimeError):
    pass


# -- the database ---------------------------------------------------------------------


def generate(path: Path, tasks: int, batch: int) -> dict[str, Any]:
    """Fill a new database at ``path`` with ``tasks`` tasks; return what to query."""
    partial = path.with_name(path.name + ".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    now = time.time()
    workload = Workload(
        start=now - DAYS * 86400 - 600,
        rate=tasks / (DAYS * 86400) / TASKS_PER_UNIT,
        big_flow_at=int(tasks * 0.6) if tasks >= 20_000 else None,
    )
    store = Store(partial)
    ingestor = Ingestor(store.writer())
    events = task_events = 0
    ingest_time = 0.0
    started = time.perf_counter()
    step, next_report = max(tasks // 10, 1), max(tasks // 10, 1)
    slice_events, slice_time = 0, 0.0
    last_ts = 0.0
    for chunk in frames(workload.events(max_tasks=tasks), batch):
        began = time.perf_counter()
        ingestor.ingest(chunk)
        spent = time.perf_counter() - began
        ingest_time += spent
        slice_time += spent
        events += len(chunk)
        task_events += sum(not e["kind"].startswith("worker") for e in chunk)
        slice_events += len(chunk)
        last_ts = chunk[-1]["ts"]
        if workload.tasks >= next_report:
            print(
                f"  {workload.tasks:>9} tasks, {events:>9} events; last slice "
                f"{slice_events / slice_time:6.0f} events/s in ingest; "
                f"{time.perf_counter() - started:5.0f} s so far",
                flush=True,
            )
            while workload.tasks >= next_report:
                next_report += step
            slice_events, slice_time = 0, 0.0
    count = store.writer().execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    # what the consumer's upkeep does as it goes: minutes older than two days become hours
    store.open_writer(Upkeep()).fold(now=last_ts)
    store.close()
    partial.rename(path)
    if workload.big_flow is None:
        raise BenchError("the workload made no big flow: use --tasks 20000 or more")
    meta = {
        "version": GENERATOR_VERSION,
        "tasks": int(count),
        "events": events,
        "task_events": task_events,
        "ingest_seconds": round(ingest_time, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "last_ts": last_ts,
        "big_flow": workload.big_flow,
        "samples": workload.samples,
        "order_ref": f"ord-{max(tasks // 10, 1):08d}",
    }
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def index(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Index every task not indexed yet, as the consumer does once caught up; note the cost."""
    store = Store(path)  # runs the search migration on an older file
    try:
        conn = store.writer()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = store.size_bytes()
        indexer = SearchIndexer(settle=0.0)
        began = time.perf_counter()
        while indexer.step(conn) >= indexer.slice_size:
            pass
        spent = time.perf_counter() - began
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = store.size_bytes()
    finally:
        store.close()
    if indexer.indexed:  # a file indexed by an earlier run keeps that run's numbers
        meta["search_index"] = {
            "tasks": indexer.indexed,
            "seconds": round(spent, 1),
            "bytes_before": before,
            "bytes_after": after,
            "pending": indexer.status["pending"],
        }
        Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def cached(path: Path) -> dict[str, Any] | None:
    meta_path = Path(f"{path}.json")
    if not path.exists() or not meta_path.exists():
        return None
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except ValueError:
        return None
    return meta if meta.get("version") == GENERATOR_VERSION else None


# -- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``stemtrace run`` on ``db`` in a subprocess; stopped by its pid.

    Without ``reads`` (a broker URL and stream key) it runs ``--no-consumer``;
    with them its consumer reads that stream, retention off.
    """

    def __init__(
        self,
        db: Path,
        log: Path,
        reads: tuple[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "stemtrace.cli",
            "run",
            "--db",
            str(db),
            "--port",
            str(self.port),
            *(
                ("--no-consumer",)
                if reads is None
                else ("--broker", reads[0], "--stream", reads[1], "--no-celery-events",
                      "--max-tasks", "0", "--retention-days", "0")
            ),
            "--log-level",
            "warning",
            *extra,
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, client: httpx.Client, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"server exited ({self.process.returncode}):\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/api/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"server not ready after {timeout:.0f} s:\n{tail(self.log)}")

    def memory_mb(self) -> dict[str, float]:
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                found[key] = int(value.split()[0]) / 1024
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# -- the requests ---------------------------------------------------------------------


def endpoints(meta: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(label, path, p95 target in ms)`` for each endpoint measured."""
    flow = meta["big_flow"]["root_id"]
    task = meta["samples"].get("retried_id") or flow
    return [
        ("tasks, first page", "/api/tasks", 50),
        ("tasks ?name=", f"/api/tasks?name={NAME}", 50),
        ("tasks ?state=FAILURE", "/api/tasks?state=FAILURE", 50),
        ("tasks ?name=&state=FAILURE", f"/api/tasks?name={FAILING_NAME}&state=FAILURE", 50),
        ("tasks ?q=Timeout", "/api/tasks?q=Timeout", 50),
        ("tasks ?q=<one old order>", f"/api/tasks?q={quote(meta['order_ref'])}", 50),
        ("tasks ?q=<no match>", "/api/tasks?q=no-such-text", 50),
        ("task detail (retried)", f"/api/tasks/{task}", 20),
        ("flow of 10,000 tasks", f"/api/flows/{flow}", 300),
        ("registry", "/api/registry", 100),
        ("registry page", "/registry", 100),
        ("workers", "/api/workers", None),
        ("health", "/api/health", None),
        ("overview, 24 h", "/?range=24h", 100),
        ("overview, 7 d", "/?range=7d", 100),
        ("overview, 7 d, one name", f"/?range=7d&name={NAME}", 100),
        ("stats, 7 d", "/api/stats?since=7d", 100),
        ("stats, 7 d, one name", f"/api/stats?since=7d&name={NAME}", 100),
        ("task name page, 7 d", f"/names/{NAME}?range=7d", 100),
        ("errors, 7 d", "/api/errors?since=7d", 100),
        ("flows page", "/flows", 100),
        ("flows ?outcome=failed", "/api/flows?outcome=failed", 100),
        ("traces page", "/traces", 100),
        ("metrics", "/metrics", 50),
        ("problems", "/api/problems", 100),
        ("problems page", "/problems", 100),
        ("queues", "/api/queues", 100),
        ("queues page", "/queues", 100),
        ("worker", f"/api/workers/{quote(inflight.WORKERS[0])}", 100),
        ("worker page", f"/workers/{quote(inflight.WORKERS[0])}", 100),
    ]


def problems_uncached(path: Path, limit: int | None, rounds: int = 20) -> list[float]:
    """Milliseconds per look for problems with no cache (the server's watch keeps one 2 s)."""
    store = Store(path)
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


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def time_requests(
    client: httpx.Client, plan: list[tuple[str, str, float | None]], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {
        label: {"ms": [], "bytes": 0, "spent": 0.0} for label, _, _ in plan
    }
    for label, path, _ in plan:
        for _ in range(args.warmup):
            response = client.get(path)
            if response.status_code != 200:
                raise BenchError(f"{path}: {response.status_code} {response.text[:300]}")
        found[label]["bytes"] = len(response.content)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        found[label]["sample"] = response.json() if is_json else None
    for _ in range(args.requests):
        for label, path, _ in plan:
            entry = found[label]
            if entry["spent"] > args.budget and len(entry["ms"]) >= 5:
                continue  # slow enough to have said so; spare the rest of the run
            began = time.perf_counter()
            response = client.get(path)
            elapsed = time.perf_counter() - began
            if response.status_code != 200:
                raise BenchError(f"{path}: {response.status_code} {response.text[:300]}")
            entry["ms"].append(elapsed * 1000)
            entry["spent"] += elapsed
    return found


def describe(label: str, sample: Any) -> str:
    """A word on what came back, to show the request did its work."""
    if not isinstance(sample, dict):
        return "a page"
    for key in ("points", "flows", "traces", "groups"):
        if isinstance(sample.get(key), list):
            return f"{len(sample[key])} {key}"
    if "tasks" in sample and isinstance(sample["tasks"], list):
        return f"{len(sample['tasks'])} rows"
    if "nodes" in sample:
        sizes = [n.get("size", 1) for n in sample["nodes"] if n["kind"] != "task"]
        return f"{len(sample['nodes'])} nodes, groups of {sizes}"
    if "workers" in sample:
        return f"{len(sample['workers'])} workers"
    if "events" in sample:
        return f"{len(sample['events'])} events, {len(sample['attempts'])} attempts"
    if "store" in sample:
        return f"{sample['store'].get('tasks')} tasks"
    return ""


def report(
    meta: dict[str, Any],
    plan: list[tuple[str, str, float | None]],
    found: dict[str, dict[str, Any]],
    memory: dict[str, dict[str, float]],
    size: int,
) -> str:
    lines = [
        f"{'endpoint':<28} {'n':>3} {'median':>8} {'p95':>8} {'target':>8}  {'':<5} response",
    ]
    for label, _, target in plan:
        entry = found[label]
        ms = entry["ms"]
        median, high = statistics.median(ms), p95(ms)
        verdict = "" if target is None else ("ok" if high < target else "SLOW")
        target_text = "-" if target is None else f"<{target:.0f}"
        lines.append(
            f"{label:<28} {len(ms):>3} {median:8.1f} {high:8.1f} {target_text:>8}  {verdict:<5} "
            f"{entry['bytes'] / 1024:.0f} KiB, {describe(label, entry['sample'])}"
        )
    rss = memory["after"]["VmRSS"]
    tasks = meta["tasks"]
    lines += [
        "(milliseconds, wall time of the HTTP request from this process)",
        f"server RSS: {memory['start']['VmRSS']:.0f} MB after start-up, {rss:.0f} MB after the "
        f"requests (peak {memory['after']['VmHWM']:.0f} MB): "
        f"{'meets' if rss < RSS_TARGET_MB else 'ABOVE'} the target < {RSS_TARGET_MB} MB",
        f"on disk: {size / 1e9:.2f} GB for {tasks} tasks, {size / tasks:.0f} bytes/task, "
        f"{size / meta['task_events']:.0f} bytes/task event ({meta['task_events']} task events,"
        f" {meta['events'] - meta['task_events']} worker events)",
    ]
    built = meta.get("search_index")
    if built:
        added = built["bytes_after"] - built["bytes_before"]
        lines.append(
            f"search index: {built['tasks']} tasks indexed in {built['seconds']:.0f} s "
            f"({built['tasks'] / max(built['seconds'], 1e-9):.0f} tasks/s); it adds "
            f"{added / 1e6:.0f} MB, {added / tasks:.0f} bytes/task "
            f"({built['bytes_before'] / tasks:.0f} -> {built['bytes_after'] / tasks:.0f} "
            f"bytes/task); {built['pending']} tasks left pending (never ended)"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_queries",
        description="API latency and server memory on a store of a million tasks.",
    )
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the store")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first")
    parser.add_argument("--batch", type=int, default=5000, help="events per ingest batch")
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="stop timing an endpoint after this many seconds (and at least 5 requests)",
    )
    parser.add_argument("--db", type=Path, help="database file (default /tmp/stemtrace-bench-N.db)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached database")
    parser.add_argument(
        "--problems-read",
        type=int,
        metavar="N",
        help="the server's --problem-inflight-limit: read at most N tasks in flight per look"
        " (the workload leaves some 23,000 in flight on ten million tasks, plus the 10,000"
        " added: --problems-read 10000 times a look at 10,000)",
    )
    args = parser.parse_args(argv)
    if args.tasks < 20_000:
        parser.error("need --tasks >= 20000 (the store holds a flow of 10,000 tasks)")
    if args.requests < 1 or args.warmup < 1 or args.batch < 1:
        parser.error("need --requests, --warmup and --batch >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.db or Path(tempfile.gettempdir()) / f"stemtrace-bench-{args.tasks}.db"
    server: Server | None = None
    uncached: list[float] = []
    log = Path(tempfile.mkstemp(prefix="bench-store-server-", suffix=".log")[1])
    try:
        with sigterm_as_exit():
            meta = None if args.fresh else cached(path)
            if meta is None:
                print(
                    f"generating {args.tasks} tasks into {path} through Ingestor.ingest in "
                    f"batches of {args.batch} events (no Redis: the consumer is measured by "
                    "bench/ingest.py) ...",
                    flush=True,
                )
                meta = generate(path, args.tasks, args.batch)
                print(
                    f"generated {meta['tasks']} tasks, {meta['events']} events in "
                    f"{meta['total_seconds']:.0f} s ({meta['events'] / meta['ingest_seconds']:.0f}"
                    " events/s in ingest)",
                    flush=True,
                )
            else:
                print(
                    f"using cached {path} ({meta['tasks']} tasks, {meta['events']} events; "
                    "--fresh rebuilds it)",
                    flush=True,
                )
            print("indexing the text q searches ...", flush=True)
            meta = index(path, meta)
            print("tasks in flight (bench/inflight.py), a heartbeat, broker counts ...", flush=True)
            meta = inflight.top_up(path, meta)
            Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
            inflight.refresh(path)
            uncached = problems_uncached(path, args.problems_read)
            size = path.stat().st_size
            extra = ()
            if args.problems_read:
                extra = ("--problem-inflight-limit", str(args.problems_read))
            server = Server(path, log, extra=extra)
            plan = endpoints(meta)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                server.wait_ready(client)
                memory = {"start": server.memory_mb()}
                print(
                    f"server pid {server.process.pid} on {server.url}; {args.warmup} warm-up + "
                    f"{args.requests} timed requests per endpoint, round robin",
                    flush=True,
                )
                found = time_requests(client, plan, args)
                memory["after"] = server.memory_mb()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    log.unlink(missing_ok=True)
    print()
    print(report(meta, plan, found, memory, size))
    print(
        f"problems found afresh (no cache), {len(uncached)} looks, each reading at most"
        f" {args.problems_read or Thresholds.inflight_limit:,} tasks in flight: median"
        f" {statistics.median(uncached):.1f} ms, p95 {p95(uncached):.1f} ms (target < 100)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
