"""Worker throughput with and without capture, in short alternating segments.

``bench.capture_overhead`` starts a fresh worker for each measurement, so the
measurements of one round are half a minute apart. On a shared machine whose
speed drifts by 20% and more within a minute, that pairs them poorly: nine
rounds still leave the ratio uncertain by several percent. This measures the
same thing (no-op tasks through a real ``celery worker -P prefork -c 2`` on a
real Redis) so that neighbouring measurements see the same machine:

* one worker per configuration (``plain``, ``stemtrace``, ``celery -E``, as
  there) starts once and stays up, idle but for its own segments;
* before any timing, a sender of each configuration (``python -m
  bench.benchapp``, with ``init(app)`` for stemtrace: the messages carry its
  header and its ``sent`` events are published) queues all the tasks that
  configuration will run in a staging list no worker reads;
* a segment moves ``--segment`` of them into one worker's queue at once
  (``RPOP`` with a count, one ``LPUSH``) and times that worker from its first
  task done to its last, as ``capture_overhead`` does;
* the configurations take turns, segment by segment, in a rotating order, so
  a slow spell of the machine falls on neighbouring segments of each.

The ratio reported is the median over cycles of each cycle's own ratio
(stemtrace segment / plain segment of the same cycle), with the quartiles of
those ratios to show the spread. The first cycle warms the workers up and is
not counted.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python -m bench.capture_segments [--segment N] [--cycles C] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench import MODES, add_redis_options
from bench.capture_overhead import (
    LABELS,
    TARGET_RATIO,
    BenchError,
    Run,
    conclude,
    count_events,
    session_cpu,
    tail,
)

BROKER = "redis"


class SegmentRun(Run):
    """Workers that stay up, fed from staging lists one segment at a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        args.broker, args.amqp_url, args.tasks, args.calls = BROKER, "", args.segment, 1
        super().__init__(args)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.logs_of: dict[str, Path] = {}

    def names(self, mode: str) -> dict[str, str]:
        env = self.env(BROKER, mode, 0)
        return {
            "queue": env["BENCH_QUEUE"],
            "stage": f"{env['BENCH_QUEUE']}:stage",
            "counter": env["BENCH_COUNTER"],
            "stream": env["BENCH_STREAM"],
        }

    def stage(self, mode: str, total: int) -> dict[str, Any]:
        """Queue ``total`` tasks of ``mode``'s sender in its staging list."""
        env = self.env(BROKER, mode, 0)
        env["BENCH_QUEUE"] = self.names(mode)["stage"]
        env["BENCH_TOTAL"] = str(total)
        sent = self.send(BROKER, mode, 0, env)
        staged = int(self.client.llen(env["BENCH_QUEUE"]))
        if staged != total:
            raise BenchError(f"{mode}: expected {total} staged tasks, found {staged}")
        return sent

    def start_all(self) -> None:
        for mode in self.args.modes:
            env = self.env(BROKER, mode, 0)  # BENCH_TOTAL: one segment
            log = self.logs / f"worker-{mode}.log"
            self.logs_of[mode] = log
            self.workers[mode] = self.start_worker(env, mode, f"seg{mode}", log)

    def segment(self, mode: str) -> dict[str, float]:
        """Hand one segment to ``mode``'s worker; its throughput and CPU per task."""
        names, size = self.names(mode), self.args.segment
        counter, worker = names["counter"], self.workers[mode]
        self.delete(f"{counter}:done", f"{counter}:first", f"{counter}:last")
        items = self.client.rpop(names["stage"], size)
        if not items or len(items) != size:
            raise BenchError(f"{mode}: the staging list ran out")
        cpu_before, main_before = session_cpu(worker.pid)
        self.client.lpush(names["queue"], *items)
        deadline = time.monotonic() + 60 + size / 20
        while int(self.client.get(f"{counter}:done") or 0) < size:
            if worker.poll() is not None:
                raise BenchError(
                    f"{mode} worker exited ({worker.returncode}):\n{tail(self.logs_of[mode])}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{mode} worker too slow or stuck:\n{tail(self.logs_of[mode])}")
            time.sleep(0.02)
        cpu_after, main_after = session_cpu(worker.pid)
        first = float(self.client.get(f"{counter}:first") or "nan")
        last = float(self.client.get(f"{counter}:last") or "nan")
        return {
            "tasks_per_s": (size - 1) / (last - first),
            "cpu_ms_per_task": (cpu_after - cpu_before) * 1e3 / size,
            "main_cpu_ms_per_task": (main_after - main_before) * 1e3 / size,
        }


def measure(run: SegmentRun) -> dict[str, Any]:
    modes, cycles, size = run.args.modes, run.args.cycles, run.args.segment
    total = (cycles + 1) * size  # one warm-up cycle
    sent = {}
    for mode in modes:
        sent[mode] = run.stage(mode, total)
        print(f"staged {total} tasks of {LABELS[mode]}", flush=True)
    run.start_all()
    rounds: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for cycle in range(cycles + 1):
        order = modes[cycle % len(modes) :] + modes[: cycle % len(modes)]
        line = []
        for mode in order:
            result = run.segment(mode)
            if cycle:
                rounds[mode].append(result)
            line.append(f"{LABELS[mode]} {result['tasks_per_s']:5.0f}")
        label = f"cycle {cycle}/{cycles}" if cycle else "warm-up"
        print(f"{label:>12}: " + ", ".join(line) + " tasks/s", flush=True)
    events = None
    if "stemtrace" in modes:
        run.stop(run.workers.pop("stemtrace"))  # warm shutdown: its publishers flush
        events = count_events(run.client, run.names("stemtrace")["stream"])
    publisher = sent.get("stemtrace", {}).get("publisher") or {}
    least = publisher.get("sent", 0) + 3 * total
    tps = {m: [r["tasks_per_s"] for r in rounds[m]] for m in modes}
    cpu = {m: [r["cpu_ms_per_task"] for r in rounds[m]] for m in modes}
    main_cpu = {m: [r["main_cpu_ms_per_task"] for r in rounds[m]] for m in modes}
    return {
        "settings": {"segment": size, "cycles": cycles, "pool": "prefork", "concurrency": 2},
        "tasks_per_s": {
            m: {"segments": tps[m], "median": statistics.median(tps[m])} for m in modes
        },
        "cpu_ms_per_task": {m: statistics.median(cpu[m]) for m in modes},
        "main_cpu_ms_per_task": {m: statistics.median(main_cpu[m]) for m in modes},
        "ratios": {
            m: _spread([a / b for a, b in zip(tps[m], tps["plain"], strict=True)])
            for m in modes
            if m != "plain"
        },
        "cpu_ratios": {
            m: _spread([b / a for a, b in zip(cpu[m], cpu["plain"], strict=True)])
            for m in modes
            if m != "plain"
        },
        "main_cpu_ratios": {
            m: _spread([b / a for a, b in zip(main_cpu[m], main_cpu["plain"], strict=True)])
            for m in modes
            if m != "plain"
        },
        "stemtrace_events": events,
        "stemtrace_events_missing": max(0, least - events) if events is not None else None,
    }


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return {"median": statistics.median(ordered), "q1": quartiles[0], "q3": quartiles[2]}


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"{s['cycles']} cycles of {s['segment']}-task segments per configuration, "
        "each worker started once (prefork -c 2); ratios are medians of each cycle's own"
    ]
    lines.append(
        f"{'':<10} {'tasks/s':>8} {'/plain':>6} {'(q1-q3)':>11} {'CPU ms/task':>11} {'plain/':>6}"
        f" {'main process':>12} {'plain/':>6}"
    )
    for mode, numbers in result["tasks_per_s"].items():
        row = f"{LABELS[mode]:<10} {numbers['median']:8.0f}"
        cpu, main = result["cpu_ms_per_task"][mode], result["main_cpu_ms_per_task"][mode]
        if mode == "plain":
            row += f" {'':>6} {'':>11} {cpu:11.2f} {'':>6} {main:12.2f}"
        else:
            r, c = result["ratios"][mode], result["cpu_ratios"][mode]
            m = result["main_cpu_ratios"][mode]
            spread = f"{r['q1']:5.2f}-{r['q3']:<5.2f}"
            row += f" {r['median']:6.3f} {spread} {cpu:11.2f} {c['median']:6.3f}"
            row += f" {main:12.2f} {m['median']:6.3f}"
        lines.append(row)
    if "stemtrace" in result["ratios"]:
        ratio = result["ratios"]["stemtrace"]["median"]
        verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
        missing = result["stemtrace_events_missing"]
        lines.append(
            f"stemtrace worker ratio {ratio:.3f} {verdict} the target {TARGET_RATIO:.2f}; "
            f"{result['stemtrace_events']} stemtrace events"
            + (f", {missing} MISSING" if missing else ", none missing")
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capture_segments",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--segment", type=int, default=1000, help="tasks per segment")
    parser.add_argument("--cycles", type=int, default=15, help="timed cycles (plus a warm-up)")
    parser.add_argument("--modes", default=",".join(MODES), help="configurations, plain first")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    add_redis_options(parser, db_help="Redis database used only by this (counters too)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or args.modes[0] != "plain" or set(args.modes) - set(MODES):
        parser.error(f"--modes: plain first, then any of {', '.join(MODES[1:])}")
    if args.segment < 10 or args.cycles < 1:
        parser.error("need --segment >= 10 and --cycles >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = SegmentRun(args)
    try:
        run.connect()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {run.redis_url}: {exc}", file=sys.stderr)
        return 2
    return conclude(run, measure, report, args.json)


if __name__ == "__main__":
    sys.exit(main())
