"""Ingestion throughput over RabbitMQ against Redis Streams: the real consumer, side by side.

``--events`` events from :mod:`bench.workload` (through ``bench.ingest.make_events``)
are encoded in frames of ``--frame`` events and made to wait for the consumer on
each transport, with capture's own senders:

* ``Redis``: appended once to a fresh stream in a private database
  (``RedisStreamSender``: ``XADD ... d <frame>``), read from the start each round;
* ``RabbitMQ``: per round, a fresh durable fanout exchange, the reader's durable
  queue declared and bound first (``open_reader("amqp://...", stream=..., queue=...)``,
  then closed: frames sent to an exchange without a queue are dropped), then the frames
  published (``AmqpSender``, persistent messages) and counted in the queue before the
  clock starts. A queue is consumed once, hence a fresh one per round.

Then, in interleaved rounds, the real :class:`stemtrace.ingest.consumer.Consumer` reads all of
it into a fresh :class:`stemtrace.store.Store` on a temporary file, with a reader
opened inside the timed span (as ``stemtrace run`` does), from the start of its loop
until ``status.ingested`` reaches the event count: wall clock, and the CPU time of this
process (``time.process_time``: consumer, client library, decoding, SQLite). The
broker's own CPU over the same span is printed apart (Redis ``INFO cpu``; RabbitMQ's
``beam.smp`` from ``/proc``, when it runs on this machine).

Usage, from the repository root, with Redis on 127.0.0.1:6379 and RabbitMQ on
127.0.0.1:5672::

    python -m bench.ingest_rabbitmq [--events N] [--rounds R] [--frame 200] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kombu import Connection

from bench import add_redis_options
from bench.capture_overhead import sigterm_as_exit
from bench.ingest import BenchError, make_events, run_consumer
from bench.workload import frames
from stemtrace.core.events import encode_frame
from stemtrace.transports import Reader, describe_url, open_reader
from stemtrace.transports.amqp import AmqpSender
from stemtrace.transports.redis import RedisStreamSender

TRANSPORTS = ("redis", "rabbitmq")
LABELS = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
SEND_CHUNK = 100
"""Frames handed to a sender's ``send`` at a time."""


class Run:
    """One invocation: its stream in Redis, its exchanges and queues in RabbitMQ."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.name = f"bench-ingest-amqp:{self.run_id}"
        self.redis_url = f"redis://{args.host}:{args.port}/{args.db}"
        self.amqp_url = args.amqp_url
        self.client = redis.Redis.from_url(self.redis_url)
        self.amqp = Connection(self.amqp_url, connect_timeout=5, heartbeat=0)
        self.amqp_names: set[str] = set()  # each a queue and an exchange of that name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-amqp-{self.run_id}-"))

    def connect(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise BenchError(f"cannot reach Redis at {self.redis_url}: {exc}") from exc
        try:
            self.amqp.ensure_connection(max_retries=1)
        except Exception as exc:
            raise BenchError(
                f"cannot reach RabbitMQ at {describe_url(self.amqp_url)}: {exc}"
            ) from exc

    # -- filling the transports (not timed) ----------------------------------

    def fill_redis(self, encoded: list[bytes]) -> None:
        sender = RedisStreamSender(self.redis_url, stream=self.name, maxlen=len(encoded) + 1000)
        try:
            for start in range(0, len(encoded), SEND_CHUNK):
                sender.send(encoded[start : start + SEND_CHUNK])
        finally:
            sender.close()
        if self.client.xlen(self.name) != len(encoded):
            raise BenchError(f"stream {self.name} holds {self.client.xlen(self.name)} frames")

    def fill_amqp(self, exchange: str, encoded: list[bytes]) -> None:
        """A fresh exchange; the reader's queue bound to it first; then every frame."""
        self.amqp_names.add(exchange)
        open_reader(self.amqp_url, stream=exchange, queue=exchange).close()
        sender = AmqpSender(self.amqp_url, stream=exchange, maxlen=len(encoded) + 1000)
        try:
            for start in range(0, len(encoded), SEND_CHUNK):
                sender.send(encoded[start : start + SEND_CHUNK])
        finally:
            sender.close()
        # Publishing is not confirmed: wait until the queue holds every frame.
        deadline = time.monotonic() + 120
        while (queued := self.amqp_backlog(exchange)) < len(encoded):
            if time.monotonic() > deadline:
                raise BenchError(f"queue {exchange} holds {queued} of {len(encoded)} frames")
            time.sleep(0.1)

    def amqp_reader(self, exchange: str) -> Callable[[], Reader]:
        """What the consumer opens (inside the timed span): the queue ``fill_amqp`` declared."""
        return lambda: open_reader(self.amqp_url, stream=exchange, queue=exchange)

    def amqp_backlog(self, queue: str) -> int:
        channel = self.amqp.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    # -- clean-up ------------------------------------------------------------

    def amqp_delete(self, *names: str) -> None:
        for name in names:
            for delete in ("queue_delete", "exchange_delete"):
                channel = None
                with contextlib.suppress(Exception):
                    channel = self.amqp.channel()
                    getattr(channel, delete)(name)
                if channel is not None:
                    with contextlib.suppress(Exception):
                        channel.close()
            self.amqp_names.discard(name)

    def cleanup(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.name)
        self.client.close()
        self.amqp_delete(*sorted(self.amqp_names))
        with contextlib.suppress(Exception):
            self.amqp.release()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- broker CPU ----------------------------------------------------------------


def redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def rabbitmq_pids() -> list[int]:
    """RabbitMQ's Erlang VM(s) on this machine, if we may read them."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "beam.smp":
                continue
            if b"rabbit" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def process_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` (``/proc/<pid>/stat``), or None."""
    if not pids:
        return None
    total = 0
    try:
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


# -- the benchmark -------------------------------------------------------------


def measure(run: Run) -> dict[str, Any]:
    args, count = run.args, run.args.events
    print(f"generating {count} events ...", flush=True)
    events = make_events(count)
    encoded = [encode_frame(batch) for batch in frames(events, args.frame)]
    del events
    wire = sum(len(f) for f in encoded)
    run.fill_redis(encoded)
    print(
        f"{count} events in {len(encoded)} frames of {args.frame}, "
        f"{wire / count:.0f} bytes/event on the wire; Redis stream {run.name} on "
        f"{run.redis_url}, RabbitMQ {describe_url(run.amqp_url)} (a fresh exchange and queue "
        f"per round)",
        flush=True,
    )
    beam = rabbitmq_pids()
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
    for round_no in range(args.rounds):
        order = TRANSPORTS if round_no % 2 == 0 else TRANSPORTS[::-1]
        for transport in order:
            if transport == "redis":
                before = redis_cpu(run.client)
                found = run_consumer(
                    lambda: open_reader(run.redis_url, stream=run.name),
                    f"bench#{run.name}",
                    count,
                    run.workdir,
                )
                found["server_cpu"] = redis_cpu(run.client) - before
            else:
                exchange = f"{run.name}:{round_no}"
                run.fill_amqp(exchange, encoded)
                before_beam = process_cpu(beam)
                found = run_consumer(
                    run.amqp_reader(exchange),
                    f"bench#{exchange}",
                    count,
                    run.workdir,
                )
                after_beam = process_cpu(beam)
                found["server_cpu"] = (
                    after_beam - before_beam
                    if after_beam is not None and before_beam is not None
                    else None
                )
                run.amqp_delete(exchange)
            results[transport].append(found)
            server = found["server_cpu"]
            print(
                f"round {round_no + 1}/{args.rounds} {LABELS[transport]:>8}: "
                f"{count / found['wall']:8.0f} events/s wall, "
                f"{count / found['cpu']:8.0f} per CPU s ({found['batches']} batches, "
                f"{found['tasks']} tasks; broker "
                + (f"{server:.2f} CPU s)" if server is not None else "CPU n/a)"),
                flush=True,
            )
    profile_text = None
    if args.profile:
        exchange = f"{run.name}:profile"
        run.fill_amqp(exchange, encoded)
        profile = cProfile.Profile()
        run_consumer(
            run.amqp_reader(exchange),
            f"bench#{exchange}",
            count,
            run.workdir,
            profile=profile,
        )
        run.amqp_delete(exchange)
        profile_text = top_frames(profile)
    return {
        "events": count,
        "frame": args.frame,
        "frames": len(encoded),
        "wire_bytes": wire,
        "results": results,
        "profile": profile_text,
    }


def top_frames(profile: cProfile.Profile, count: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(count)
    stats.sort_stats("cumulative").print_stats(count)
    return out.getvalue()


def report(result: dict[str, Any]) -> str:
    count = result["events"]
    wall, cpu, server = {}, {}, {}
    for transport, runs in result["results"].items():
        wall[transport] = statistics.median(count / r["wall"] for r in runs)
        cpu[transport] = statistics.median(count / r["cpu"] for r in runs)
        used = [r["server_cpu"] for r in runs if r["server_cpu"] is not None]
        server[transport] = f"{statistics.median(used):.2f}" if used else "n/a"
    rounds = len(result["results"]["redis"])
    header = f"{'transport':<10} {'events/s wall':>14} {'per CPU s':>10} {'broker CPU s':>13}"
    lines = [
        f"medians of {rounds} interleaved rounds; {count} events in {result['frames']} frames "
        f"of {result['frame']}, real Consumer into a fresh Store (retention off)",
        "",
        header,
        "-" * len(header),
    ]
    for transport in TRANSPORTS:
        lines.append(
            f"{LABELS[transport]:<10} {wall[transport]:14.0f} {cpu[transport]:10.0f} "
            f"{server[transport]:>13}"
        )
    lines += [
        "",
        f"ratio RabbitMQ/Redis: {wall['rabbitmq'] / wall['redis']:.2f} wall, "
        f"{cpu['rabbitmq'] / cpu['redis']:.2f} per CPU s of this process",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_rabbitmq",
        description="Consumer throughput into SQLite: RabbitMQ queue vs Redis stream.",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--frame", type=int, default=200, help="events per frame")
    parser.add_argument(
        "--profile", action="store_true", help="profile one more RabbitMQ consumer run"
    )
    parser.add_argument(
        "--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//", help="RabbitMQ URL"
    )
    add_redis_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.frame < 1:
        parser.error("need --events, --rounds and --frame >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    try:
        run.connect()
        with sigterm_as_exit():
            result = measure(run)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        run.cleanup()
    print()
    print(report(result))
    if result["profile"]:
        print()
        print("cProfile of one RabbitMQ consumer run (the consumer loop, in this thread):")
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
