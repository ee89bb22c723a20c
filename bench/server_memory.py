"""The server's memory with its consumer at work, on a million-task store.

``bench.store_queries`` times the API of a server that only reads. A real
``stemtrace run`` also writes: its consumer decodes batches, keeps a page cache
and indexes new text, while request threads read. This benchmark copies the
1,000,000-task store that ``bench.store_queries`` builds (and caches under
``/tmp``; built here too when missing), appends ``--events`` events of
:mod:`bench.workload` to a fresh Redis stream, and starts ``python -m
stemtrace.cli run`` on the copy with its consumer reading that stream
(retention off, so the store only grows). It reports:

* how fast the consumer ingests into a store that size (wall clock, from the
  server's ``/api/health`` counter): random inserts into big indexes cost
  more than into the fresh store of ``bench.ingest``;
* the server's resident memory (``VmRSS``, of which ``RssAnon``) after
  start-up, once the stream is ingested, and after ``--clients`` clients
  have made ``--requests`` requests each over the endpoints of
  ``bench.store_queries`` at the same time (so that many request threads
  hold a reader connection), and its peak (``VmHWM``), against the 250 MB
  target.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python -m bench.server_memory [--events 300000] [--clients 8] [--requests 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import add_redis_options
from bench.capture_overhead import sigterm_as_exit
from bench.ingest import fill_stream, make_events
from bench.store_queries import (
    RSS_TARGET_MB,
    BenchError,
    Server,
    cached,
    endpoints,
    generate,
    index,
)
from bench.workload import frames
from stemtrace.core.events import encode_frame

TASKS = 1_000_000


def store_copy(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the cached million-task store (built first when missing)."""
    path = Path(tempfile.gettempdir()) / f"stemtrace-bench-{TASKS}.db"
    meta = cached(path)
    if meta is None:
        print(f"building {path} as bench.store_queries does (several minutes) ...", flush=True)
        meta = generate(path, TASKS, 5000)
    meta = index(path, meta)
    copy = workdir / "server.db"
    print(f"copying {path} ({path.stat().st_size / 1e9:.1f} GB) ...", flush=True)
    shutil.copyfile(path, copy)
    return copy, meta


def hammer(server: Server, plan: list[tuple[str, str, float | None]], args: Any) -> int:
    """``--clients`` threads, each making ``--requests`` rounds over ``plan``; requests made."""
    made = [0] * args.clients
    failures: list[str] = []

    def client(slot: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for _ in range(args.requests):
                for _, path, _ in plan:
                    response = http.get(path)
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code}")
                    made[slot] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise BenchError(f"{len(failures)} failed requests, first: {failures[0]}")
    return sum(made)


def describe(memory: dict[str, float]) -> str:
    return f"{memory['VmRSS']:.0f} MB (anonymous {memory['RssAnon']:.0f})"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    url = f"redis://{args.host}:{args.port}/{args.db}"
    client = redis.Redis.from_url(url)
    stream = f"bench-memory:{uuid.uuid4().hex[:8]}"
    server: Server | None = None
    try:
        client.ping()
        db, meta = store_copy(workdir)
        print(f"appending {args.events} events to {stream} ...", flush=True)
        events = make_events(args.events)
        fill_stream(url, stream, [encode_frame(batch) for batch in frames(events, 200)])
        del events
        server = Server(db, workdir / "server.log", reads=(url, stream))
        result: dict[str, Any] = {"events": args.events}
        with httpx.Client(base_url=server.url, timeout=120) as http:
            server.wait_ready(http)
            result["start"] = server.memory_mb()
            began = time.monotonic()
            deadline = began + 60 + args.events / 2000
            ingested = 0
            while ingested < args.events:
                if time.monotonic() > deadline:
                    raise BenchError(f"consumer stuck at {ingested}/{args.events} events")
                time.sleep(0.25)
                health = http.get("/api/health").json()
                ingested = int((health.get("consumer") or {}).get("ingested") or 0)
            result["ingest_seconds"] = time.monotonic() - began
            result["ingested"] = server.memory_mb()
        result["requests"] = hammer(server, endpoints(meta), args)
        result["after"] = server.memory_mb()
        return result
    except redis.RedisError as exc:
        raise BenchError(f"cannot use Redis at {url}: {exc}") from None
    finally:
        if server is not None:
            server.stop()
        client.delete(stream)
        client.close()


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    peak = result["after"]["VmHWM"]
    verdict = "meets" if peak < RSS_TARGET_MB else "ABOVE"
    return "\n".join(
        [
            f"consumer: {result['events']} events into a {TASKS:,}-task store in "
            f"{result['ingest_seconds']:.1f} s: {result['events'] / result['ingest_seconds']:.0f}"
            " events/s (wall, polled every 0.25 s)",
            f"server RSS after start-up: {describe(result['start'])}",
            f"server RSS once the stream is ingested: {describe(result['ingested'])}",
            f"server RSS after {result['requests']} requests from {args.clients} clients at "
            f"once: {describe(result['after'])}",
            f"server peak RSS {peak:.0f} MB: {verdict} the target < {RSS_TARGET_MB} MB",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server_memory",
        description="The server's memory with its consumer ingesting into a 1M-task store.",
    )
    parser.add_argument("--events", type=int, default=300_000, help="events to ingest")
    parser.add_argument("--clients", type=int, default=8, help="clients at once")
    parser.add_argument("--requests", type=int, default=20, help="rounds per client")
    add_redis_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.clients < 1 or args.requests < 1:
        parser.error("need --events, --clients and --requests >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        with sigterm_as_exit():
            result = run(args, workdir)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
