"""A consumer's memory while it writes into a big store (:mod:`bench.store_backends`).

The same events each run (a seeded :class:`~bench.workload.Workload` of its own,
``--consumer-events`` of them, so every run writes the same tasks again: a store
grows by their few thousand tasks once) are put on a Redis stream of the run's own.
Into each store in turn, a real ``python -m stemtrace.cli consume`` (retention
off, no queue polling) starts on an empty key; once it says it reads, a copy of
the filled stream is renamed onto the key, and the clock runs until the store's
cursor is the last entry's id. Its peak resident memory (``VmHWM``,
:mod:`bench.procstat`) is read before it is stopped, by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench import procstat
from bench.ingest import fill_stream
from bench.store_queries import BenchError
from bench.workload import Workload, frames
from stemtrace.core.events import encode_frame

SEED = 1818
"""The consumer's events: a workload of its own, the same ids every run."""


def runs(args: argparse.Namespace, targets: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A real ``stemtrace consume`` into each store in turn, the same events: its memory."""
    url = f"redis://{args.host}:{args.port}/{args.db}"
    client = redis.Redis.from_url(url)
    prefix = f"bench-backends:{uuid.uuid4().hex[:8]}"
    count = args.consumer_events
    workload = Workload(start=time.time() - count / 1500, rate=300, seed=SEED)
    events = list(itertools.islice(workload.events(), count))
    tasks = len({event["task_id"] for event in events if "task_id" in event})
    fill_stream(url, f"{prefix}:events", [encode_frame(batch) for batch in frames(events, 50)])
    last: Any = client.xrevrange(f"{prefix}:events", count=1)
    last_id = last[0][0].decode()
    found: dict[str, dict[str, Any]] = {}
    try:
        for backend, target in targets.items():
            found[backend] = consume_once(args, client, url, f"{prefix}:{backend}", target, last_id)
            found[backend]["tasks"] = tasks
    finally:
        keys: Any = client.keys(f"{prefix}:*")
        if keys:
            client.delete(*keys)
        client.close()
    return found


def consume_once(
    args: argparse.Namespace, client: redis.Redis, url: str, stream: str, target: str, last_id: str
) -> dict[str, Any]:
    """Start a consumer on the empty ``stream``, hand it the events, wait for the last one."""
    client.copy(stream.rsplit(":", 1)[0] + ":events", f"{stream}:staging")
    log = Path(tempfile.mkstemp(prefix="bench-backends-consume-", suffix=".log")[1])
    command = [
        sys.executable, "-m", "stemtrace.cli", "consume", "--broker", url, "--stream", stream,
        "--db", target, "--no-celery-events", "--queue-poll-seconds", "0",
        "--max-tasks", "0", "--retention-days", "0", "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while ": reading " not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"consume did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.0)
        start = time.monotonic()
        client.rename(f"{stream}:staging", stream)
        while not _cursor_at(target, last_id):
            if process.poll() is not None or time.monotonic() > start + 900:
                raise BenchError(f"consume did not finish:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        wall = time.monotonic() - start
        memory = procstat.memory(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    log.unlink(missing_ok=True)
    return {"seconds": wall, "events": args.consumer_events, "memory": memory}


def _cursor_at(target: str, position: str) -> bool:
    query = "SELECT 1 FROM cursors WHERE position = {}"
    try:
        if target.startswith("postgresql://"):
            with psycopg.connect(target, connect_timeout=5) as conn:
                return conn.execute(query.format("%s"), (position,)).fetchone() is not None
        with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as lite:
            return lite.execute(query.format("?"), (position,)).fetchone() is not None
    except (sqlite3.Error, psycopg.Error):
        return False  # busy a moment, or not there yet
