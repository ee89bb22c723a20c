"""What capture costs in instructions executed by the worker: repeatable where time is not.

``bench.capture_overhead`` measures throughput, which moves by 10% and more
between runs on a shared machine. This counts instead, with valgrind's
callgrind, the instructions a real worker executes per no-op task in each
configuration (``plain``, ``stemtrace``, ``celery -E``: as there), every
process and thread of the worker included; callgrind counts the same for the
same work whatever else the machine is doing.

Per configuration, a sender (``python -m bench.benchapp``) pre-fills a queue,
then ``celery worker`` runs it under ``valgrind --tool=callgrind`` until the
counter reaches the count, and is stopped with a warm shutdown (stemtrace
flushes). That is done for two task counts; the difference of the totals
divided by the difference of the counts is the cost per task, start-up and
shutdown cancelled out. The Redis server is not counted (another process):
stemtrace adds about one ``XADD`` per 100-200 events there. Capture's
publisher sends a frame every 200 events here rather than every 0.2 s as well
(the clock runs about 50 times too slow under callgrind, see
:meth:`CountingRun.env`).

Usage, from the repository root, with Redis on 127.0.0.1:6379 and valgrind::

    python -m bench.capture_instructions [--tasks 40,200] [--pool solo|prefork]

A run under callgrind is about 50 times slower than natively: the default
takes about five minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from bench import MODES
from bench.capture_overhead import LABELS, BenchError, Run, sigterm_as_exit, tail

REDIS_BROKER = "redis"


class CountingRun(Run):
    """A :class:`Run` whose worker runs under callgrind, with a task count per measurement
    (``args.tasks``, which :meth:`Run.env` passes on as ``BENCH_TOTAL``)."""

    def env(self, broker: str, mode: str, round_no: int) -> dict[str, str]:
        env = super().env(broker, mode, round_no)
        # Frames go out every 0.2 s or 200 events, whichever comes first. Under
        # callgrind a worker runs some 50 times slower, so the clock would cut
        # frames of a few events, and each XADD (about 240,000 instructions in
        # redis-py) would weigh on every task as it does not at full speed.
        # Filling frames by count keeps the share a frame has per event as it is
        # natively (frames of about 80-200 events).
        env["STEMTRACE_FLUSH_INTERVAL"] = "30"
        env["STEMTRACE_HEARTBEAT_INTERVAL"] = "30"
        return env

    def instructions(self, mode: str, total: int) -> tuple[int, int]:
        """Instructions the worker executed to start, run ``total`` tasks and stop.

        Two counts: its main process (which takes the messages and hands them to
        the pool) and the rest (pool children; nothing else under ``solo``).
        """
        self.args.tasks = total
        self.send(REDIS_BROKER, mode, total)
        env = self.env(REDIS_BROKER, mode, total)
        counter = env["BENCH_COUNTER"]
        out_dir = self.logs / f"callgrind-{mode}-{total}"
        out_dir.mkdir()
        log = self.logs / f"worker-{mode}-{total}.log"
        worker = self.start_worker(
            env, mode, f"{mode}{total}", log,
            pool=("-P", "solo") if self.args.pool == "solo" else ("-P", "prefork", "-c", "2"),
            wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p"),
            options=("--without-heartbeat",),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300 + total * 2
            while int(self.client.get(f"{counter}:done") or 0) < total:
                if worker.poll() is not None:
                    raise BenchError(f"{mode} worker exited ({worker.returncode}):\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{mode} worker too slow or stuck:\n{tail(log)}")
                time.sleep(0.2)
        finally:
            self.stop(worker, timeout=300)  # warm shutdown under valgrind is slow too
        self.delete(f"{counter}:done", f"{counter}:first", f"{counter}:last")
        self.delete(env["BENCH_QUEUE"], env["BENCH_STREAM"])
        return sum_totals(out_dir, log, main_pid=worker.pid)


def sum_totals(out_dir: Path, log: Path, *, main_pid: int) -> tuple[int, int]:
    """The ``totals:`` of the callgrind outputs in ``out_dir`` (``cg.<pid>``, one per
    process): the main process's, and the sum of the others."""
    main = rest = 0
    found = False
    for path in out_dir.iterdir():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                count = int(line.split()[1])
                if path.name == f"cg.{main_pid}":
                    main += count
                    found = True
                else:
                    rest += count
                break
    if not found:
        raise BenchError(f"callgrind wrote no totals for the worker in {out_dir}:\n{tail(log)}")
    return main, rest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", default="40,200", help="the two task counts, comma-separated (default 40,200)"
    )
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo")
    parser.add_argument("--modes", default=",".join(MODES), help="configurations to count")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--db", type=int, default=13)
    args = parser.parse_args(argv)
    try:
        low, high = (int(n) for n in args.tasks.split(","))
    except ValueError:
        parser.error(f"--tasks takes two counts such as 40,200, not {args.tasks!r}")
    if not 0 < low < high:
        parser.error("--tasks: the first count must be positive and below the second")
    args.counts = (low, high)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or "plain" not in args.modes:
        parser.error(f"--modes: choose among {', '.join(MODES)}, plain included")
    # What Run expects of a capture_overhead invocation.
    args.broker, args.calls, args.amqp_url = REDIS_BROKER, 1, ""
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    run = CountingRun(args)
    print(f"run {run.run_id}: logs in {run.logs}", flush=True)
    low, high = args.counts
    per_task: dict[str, tuple[float, float]] = {}  # main process, pool children
    try:
        with sigterm_as_exit():
            run.connect()
            for mode in args.modes:
                counts = {n: run.instructions(mode, n) for n in (low, high)}
                main, rest = ((counts[high][i] - counts[low][i]) / (high - low) for i in (0, 1))
                per_task[mode] = (main, rest)
                print(
                    f"{LABELS[mode]:>10}: {sum(counts[low]):,} instructions for {low} tasks,"
                    f" {sum(counts[high]):,} for {high}: {main + rest:,.0f} per task"
                    f" (main process {main:,.0f})",
                    flush=True,
                )
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        run.cleanup()
    plain_main, plain_rest = per_task["plain"]
    plain = plain_main + plain_rest
    print(f"\nworker instructions per no-op task ({args.pool} pool, Redis broker), callgrind")
    header = f"{'':>10}  {'per task':>12}  {'added':>8}  {'plain/this':>10}"
    if args.pool == "prefork":
        header += f"  {'main proc.':>12}  {'added':>8}  {'plain/this':>10}"
    print(header)
    for mode, (main, rest) in per_task.items():
        count = main + rest
        line = f"{LABELS[mode]:>10}  {count:>12,.0f}  {(count - plain) / plain:>+8.1%}"
        line += f"  {plain / count:>10.3f}"
        if args.pool == "prefork":
            line += f"  {main:>12,.0f}  {(main - plain_main) / plain_main:>+8.1%}"
            line += f"  {plain_main / main:>10.3f}"
        print(line)
    print("plain/this: the throughput ratio if the worker were bound by its own instructions")
    if args.pool == "prefork":
        print(
            "main proc.: the worker's main process alone, which bounds a prefork worker's"
            " throughput when there are cores to spare"
        )
    shutil.rmtree(run.logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
