"""Ingestion throughput: the real consumer, Redis stream to SQLite, against Celery's State.

``--events`` events from :mod:`bench.workload` (tasks with sent, received,
started and succeeded events, retries, failures, chains, groups, chords, worker
heartbeats) are encoded in frames of ``--frame`` events and appended to a
fresh Redis stream with the capture sender (``RedisStreamSender``, one entry
``{"d": frame}`` per frame). Then, in interleaved rounds:

* ``stemtrace``: the real :class:`stemtrace.ingest.consumer.Consumer` with
  :func:`stemtrace.transports.open_reader` reads the whole stream into a fresh
  :class:`stemtrace.store.Store` on a temporary file. Timed from the start of
  its loop until ``status.ingested`` reaches the event count (wall clock), and
  the CPU time of this process over the same span (``time.process_time``: the
  consumer thread, plus the Redis client; the Redis server runs elsewhere and
  is reported apart).
* ``celery State``: Celery's in-memory ``celery.events.state.State()`` (default
  ``max_tasks_in_memory``, as Flower uses it) fed the same number of the
  events Celery itself sends for the same transitions. No transport, no
  decoding, no disk: an upper bound for what Celery's event tooling does.

The garbage collector: the benchmark's own fixtures (the events, frames and
Celery's copies, hundreds of thousands of objects) are frozen once built, so
that neither side pays for the collector walking them. stemtrace runs with the
settings its own processes use (:func:`stemtrace.cli.gc.tune`, as ``stemtrace
run`` and ``stemtrace consume`` do), Celery's State with Python's defaults (as
Flower runs it), and, for a like-for-like figure, once more with stemtrace's.

* ``no rollups``: the same consumer with the rollups and digests turned off
  (:func:`stemtrace.store.tally.tally` replaced by a no-op): the ratio of
  the two is what keeping the rollups costs ingestion. Printed as the ratio of
  the medians, and as each round's own ratio (its two runs side by side) with
  their median. Steadiest of all, the share of each run's CPU time (the
  consumer thread's) spent counting them, measured inside the run: a machine
  slower for a while slows both parts alike. ``--rollups`` runs only these
  two, in pairs, in turn first.

``--profile`` adds one more stemtrace run under cProfile and prints its top frames.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python -m bench.ingest [--events N] [--rounds R] [--frame 200] [--profile] [--rollups]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import itertools
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any
from unittest import mock

import redis

from bench import add_redis_options
from bench.workload import CeleryTranslator, Event, Workload, frames
from stemtrace.cli import gc as collector
from stemtrace.core.events import encode_frame
from stemtrace.ingest.consumer import Consumer
from stemtrace.store import Store, tally
from stemtrace.transports import Reader, open_reader
from stemtrace.transports.redis import RedisStreamSender

TARGET_PER_CORE = 50_000


class BenchError(RuntimeError):
    pass


def make_events(count: int) -> list[Event]:
    """``count`` events of a busy deployment (~300 units of work a second), ending now."""
    workload = Workload(start=time.time() - count / 1500, rate=300)
    return list(itertools.islice(workload.events(), count))


def fill_stream(url: str, stream: str, encoded: list[bytes]) -> None:
    sender = RedisStreamSender(url, stream=stream, maxlen=len(encoded) + 1000)
    try:
        for start in range(0, len(encoded), 100):
            sender.send(encoded[start : start + 100])
    finally:
        sender.close()


def redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def collector_settings(tuned: bool) -> Iterator[None]:
    """stemtrace's collector settings (:func:`stemtrace.cli.gc.tune`) for a while."""
    before = gc.get_threshold()
    if tuned:
        collector.tune()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_consumer(
    reader: Callable[[], Reader],
    source: str,
    expected: int,
    workdir: Path,
    *,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Drain a transport into a fresh store; time until ``ingested == expected``.

    Shared by ``bench.ingest`` (Redis) and ``bench.ingest_rabbitmq``.
    """
    path = workdir / f"stemtrace-{uuid.uuid4().hex[:8]}.db"
    store = Store(path)
    consumer = Consumer(store, reader, source=source)
    status = consumer.status
    done: dict[str, float] = {}

    def listener(tasks: AbstractSet[str], workers: AbstractSet[str]) -> None:
        # Called by the consumer after each batch, as the server's live updates are.
        if status.ingested + status.skipped >= expected:
            done["cpu"] = time.process_time()
            done["wall"] = time.time()
            consumer.stop()

    consumer.listeners.append(listener)
    deadline = threading.Timer(max(60.0, expected / 2000), consumer.stop)
    deadline.daemon = True
    with collector_settings(tuned=True):  # as ``stemtrace run`` and ``consume`` start
        deadline.start()
        start_wall, start_cpu = time.time(), time.process_time()
        # The consumer's loop runs here, in this thread, exactly as Consumer.start() runs
        # it in its own: the listener stops it, and cProfile can see it.
        try:
            if profile is not None:
                profile.runcall(consumer.run)
            else:
                consumer.run()
        finally:
            deadline.cancel()
    try:
        if "wall" not in done:
            raise BenchError(
                f"{source}: consumer stopped at {status.ingested}/{expected} events"
                f" (skipped {status.skipped}, last error {status.last_error})"
            )
        if status.skipped:
            raise BenchError(f"consumer skipped {status.skipped}: {list(status.skip_reasons)[:3]}")
        tasks = int(store.writer().execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    finally:
        store.close()  # the last connection checkpoints and removes the WAL
        size = store.size_bytes()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {
        "wall": done["wall"] - start_wall,
        "cpu": done["cpu"] - start_cpu,
        "batches": status.batches,
        "tasks": tasks,
        "bytes": size,
    }


@contextlib.contextmanager
def timed_tally() -> Iterator[dict[str, float]]:
    """The CPU time the consumer's thread spends counting the rollups (:func:`tally.tally`),
    for as long as the block runs: its share of the run, measured inside the run."""
    counted = {"cpu": 0.0}
    real = tally.tally

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.thread_time()
        try:
            real(*args, **kwargs)
        finally:
            counted["cpu"] += time.thread_time() - start

    with mock.patch.object(tally, "tally", timed):
        yield counted


def run_celery(events: list[dict[str, Any]], *, tuned: bool = False) -> dict[str, float]:
    from celery.events.state import State

    state = State()
    feed = state.event
    with collector_settings(tuned):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for event in events:
            feed(event)
        end_wall, end_cpu = time.perf_counter(), time.process_time()
    del state  # outside the timing: freeing what State built
    return {"wall": end_wall - start_wall, "cpu": end_cpu - start_cpu}


def top_frames(profile: cProfile.Profile, count: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(count)
    stats.sort_stats("cumulative").print_stats(count)
    return out.getvalue()


def measure(args: argparse.Namespace, client: redis.Redis, url: str) -> dict[str, Any]:
    count = args.events
    print(f"generating {count} events ...", flush=True)
    events = make_events(count)
    encoded = [encode_frame(batch) for batch in frames(events, args.frame)]
    wire = sum(len(f) for f in encoded)
    translate = CeleryTranslator()
    celery_events = [translate(e) for e in events]
    stream = f"bench-ingest:{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    results: dict[str, list[dict[str, Any]]] = {
        "stemtrace": [], "celery": [], "tuned": [], "bare": []
    }  # fmt: skip
    redis_cpu_used: list[float] = []
    gc.collect()
    gc.freeze()  # the fixtures: neither side should pay for the collector walking them
    try:
        fill_stream(url, stream, encoded)
        print(
            f"{count} events ({sum(e['kind'] == 'sent' for e in events)} sent) in "
            f"{len(encoded)} frames of {args.frame} on {url} {stream}, "
            f"{wire / count:.0f} bytes/event on the wire",
            flush=True,
        )
        for round_no in range(args.rounds):
            order = (
                ("stemtrace", "bare") if args.rollups else ("stemtrace", "celery", "tuned", "bare")
            )
            if round_no % 2:
                order = order[::-1]
            for which in order:
                if which == "bare":
                    with mock.patch.object(tally, "tally", lambda *_: None):
                        found = run_consumer(
                            lambda: open_reader(url, stream=stream),
                            f"bench#{stream}",
                            count,
                            workdir,
                        )
                    line = (
                        f"stemtrace without rollups {count / found['wall']:8.0f} events/s wall, "
                        f"{count / found['cpu']:8.0f} per CPU s"
                    )
                elif which == "stemtrace":
                    before = redis_cpu(client)
                    with timed_tally() as counted:
                        found = run_consumer(
                            lambda: open_reader(url, stream=stream),
                            f"bench#{stream}",
                            count,
                            workdir,
                        )
                    found["tally_cpu"] = counted["cpu"]
                    redis_cpu_used.append(redis_cpu(client) - before)
                    line = (
                        f"stemtrace {count / found['wall']:8.0f} events/s wall, "
                        f"{count / found['cpu']:8.0f} per CPU s ({found['batches']} batches)"
                    )
                else:
                    # Fresh dicts each round: State keeps references to what it is fed.
                    tuned = which == "tuned"
                    found = run_celery([dict(e) for e in celery_events], tuned=tuned)
                    label = "celery State, stemtrace's gc settings" if tuned else "celery State"
                    line = (
                        f"{label} {count / found['wall']:8.0f} events/s wall, "
                        f"{count / found['cpu']:8.0f} per CPU s"
                    )
                results[which].append(found)
                print(f"round {round_no + 1}/{args.rounds} {line}", flush=True)
        profile_text = None
        if args.profile:
            profile = cProfile.Profile()
            run_consumer(
                lambda: open_reader(url, stream=stream),
                f"bench#{stream}",
                count,
                workdir,
                profile=profile,
            )
            profile_text = top_frames(profile)
    finally:
        client.delete(stream)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "events": count,
        "wire_bytes": wire,
        "stemtrace": results["stemtrace"],
        "celery": results["celery"],
        "tuned": results["tuned"],
        "bare": results["bare"],
        "redis_cpu": redis_cpu_used,
        "profile": profile_text,
    }


def rollup_cost(result: dict[str, Any]) -> str:
    """What the rollups cost: the medians' ratio, and the median of each round's own ratio
    (its two runs side by side, so a machine slower for a while slows both)."""
    count = result["events"]
    st, bare = result["stemtrace"], result["bare"]
    st_wall = statistics.median(count / r["wall"] for r in st)
    st_cpu = statistics.median(count / r["cpu"] for r in st)
    bare_wall = statistics.median(count / r["wall"] for r in bare)
    bare_cpu = statistics.median(count / r["cpu"] for r in bare)
    paired = [b["cpu"] / s["cpu"] for s, b in zip(st, bare, strict=True)]
    shares = [s["tally_cpu"] / s["cpu"] for s in st]
    return (
        f"rollups: with/without {st_wall / bare_wall:.2f} wall, {st_cpu / bare_cpu:.2f} per"
        f" CPU s ({bare_cpu:.0f} events per CPU s without them); each round's own ratio per"
        f" CPU s: {' '.join(f'{r:.2f}' for r in paired)}, median {statistics.median(paired):.2f}"
        f"\nrollups' share of the consumer's CPU, measured inside each run with them:"
        f" {' '.join(f'{100 * r:.1f}%' for r in shares)}, median"
        f" {100 * statistics.median(shares):.1f}% (with/without"
        f" {1 - statistics.median(shares):.2f} were nothing else to change without them)"
    )


def report(result: dict[str, Any]) -> str:
    count = result["events"]
    st = result["stemtrace"]
    st_wall = statistics.median(count / r["wall"] for r in st)
    st_cpu = statistics.median(count / r["cpu"] for r in st)
    last = st[-1]
    lines = [
        f"medians of {len(st)} interleaved rounds, {count} events each",
        f"stemtrace consumer (Redis -> decode -> SQLite): {st_wall:.0f} events/s wall, "
        f"{st_cpu:.0f} events/s per CPU second of this process "
        f"(+ Redis server {statistics.median(result['redis_cpu']):.2f} CPU s per run)",
    ]
    if result["celery"]:
        ce, tuned = result["celery"], result["tuned"]
        ce_wall = statistics.median(count / r["wall"] for r in ce)
        ce_cpu = statistics.median(count / r["cpu"] for r in ce)
        tu_wall = statistics.median(count / r["wall"] for r in tuned)
        tu_cpu = statistics.median(count / r["cpu"] for r in tuned)
        lines += [
            f"celery State (in memory, no transport, Python's gc defaults as in Flower): "
            f"{ce_wall:.0f} events/s wall, {ce_cpu:.0f} per CPU second",
            f"celery State with stemtrace's gc settings: {tu_wall:.0f} events/s wall, "
            f"{tu_cpu:.0f} per CPU second",
            f"ratio stemtrace/celery: {st_wall / ce_wall:.2f} wall, "
            f"{st_cpu / ce_cpu:.2f} per CPU s; "
            f"against the same gc settings: {st_wall / tu_wall:.2f} wall, "
            f"{st_cpu / tu_cpu:.2f} per CPU s",
        ]
    lines += [
        rollup_cost(result),
        f"on disk: {last['bytes'] / 1e6:.1f} MB for {last['tasks']} tasks: "
        f"{last['bytes'] / last['tasks']:.0f} bytes/task, {last['bytes'] / count:.0f} "
        f"bytes/event (wire: {result['wire_bytes'] / count:.0f} bytes/event)",
    ]
    if result["celery"]:
        verdict = "meets" if st_cpu >= TARGET_PER_CORE else "BELOW"
        lines.append(
            f"stemtrace {st_cpu:.0f} events/s per core {verdict} the target {TARGET_PER_CORE}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Consumer throughput (Redis stream -> SQLite) against Celery's State.",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--frame", type=int, default=200, help="events per frame")
    parser.add_argument("--profile", action="store_true", help="profile one more consumer run")
    parser.add_argument(
        "--rollups",
        action="store_true",
        help="only what the rollups cost: the consumer with and without them, in pairs",
    )
    add_redis_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.frame < 1:
        parser.error("need --events, --rounds and --frame >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = f"redis://{args.host}:{args.port}/{args.db}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {url}: {exc}", file=sys.stderr)
        return 2
    try:
        result = measure(args, client, url)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
    print()
    print(report(result))
    if result["profile"]:
        print()
        print("cProfile of one consumer run (the consumer loop, in this thread):")
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
