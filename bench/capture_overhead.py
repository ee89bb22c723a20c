"""What capture costs: worker throughput and ``apply_async`` time, side by side.

Three configurations, run interleaved in one invocation (the machine is shared
and noisy, so only ratios measured together mean much):

* ``plain``: no stemtrace, no events;
* ``stemtrace``: ``stemtrace.init(app)`` in the sender and in the worker;
* ``celery-events``: Celery's own events (worker ``-E``,
  ``task_send_sent_event``), for comparison.

Per round and configuration a sender process (``python -m bench.benchapp``)
times ``--calls`` ``apply_async`` calls to a throw-away queue, then pre-fills
the worker queue with ``--tasks`` no-op tasks while no worker runs. Then a real
``celery worker -P prefork -c 2`` drains it; each task INCRs a Redis counter,
and the first and last task stamp the time, so throughput is
``(tasks - 1) / (last - first)`` without polling in the timed window.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python -m bench.capture_overhead [--tasks N] [--rounds R] [--calls K] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench import MODES

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"plain": "plain", "stemtrace": "stemtrace", "celery-events": "celery -E"}
TARGET_RATIO = 0.95


class BenchError(RuntimeError):
    pass


class Run:
    """One invocation: its keys in Redis, its log directory, the processes it started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.broker = f"redis://{args.host}:{args.port}/{args.db}"
        self.client = redis.Redis.from_url(self.broker)
        self.logs = Path(tempfile.mkdtemp(prefix=f"bench-capture-{self.run_id}-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.prefix = f"bench-capture:{self.run_id}"

    def env(self, mode: str, round_no: int) -> dict[str, str]:
        env = {
            **os.environ,
            "BENCH_BROKER": self.broker,
            "BENCH_QUEUE": f"{self.prefix}:q:{mode}:{round_no}",
            "BENCH_MODE": mode,
            "BENCH_STREAM": f"{self.prefix}:events:{mode}:{round_no}",
            "BENCH_COUNTER": f"{self.prefix}:count:{mode}:{round_no}",
            "BENCH_TOTAL": str(self.args.tasks),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "C_FORCE_ROOT": "1",
        }
        # A stray STEMTRACE_* setting (say, STEMTRACE_ENABLED=0) would skew the comparison.
        for name in [n for n in env if n.startswith("STEMTRACE_")]:
            del env[name]
        return env

    # -- one measurement -----------------------------------------------------

    def send(self, mode: str, round_no: int) -> dict[str, Any]:
        """Time apply_async and pre-fill the worker queue, in a sender process of ``mode``."""
        throwaway = f"{self.prefix}:throwaway:{mode}:{round_no}"
        command = [
            sys.executable, "-m", "bench.benchapp",
            "--calls", str(self.args.calls), "--throwaway", throwaway,
        ]  # fmt: skip
        log = self.logs / f"send-{mode}-{round_no}.log"
        try:
            with open(log, "wb") as err:
                env = self.env(mode, round_no)
                process = self.start(command, env, stdout=subprocess.PIPE, stderr=err)
                out, _ = process.communicate(timeout=300)
            if process.returncode != 0:
                raise BenchError(f"sender ({mode}) failed:\n{tail(log)}")
            return dict(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            self.delete(throwaway, f"_kombu.binding.{throwaway}")

    def drain(self, mode: str, round_no: int) -> dict[str, Any]:
        """Start a worker on the pre-filled queue; return its throughput once it is empty."""
        env = self.env(mode, round_no)
        counter, total = env["BENCH_COUNTER"], self.args.tasks
        queued = int(self.client.llen(env["BENCH_QUEUE"]))
        if queued != total:
            raise BenchError(f"{mode}: expected {total} queued tasks, found {queued}")
        command = [
            sys.executable, "-m", "celery", "-A", "bench.benchapp:app", "worker",
            "-P", "prefork", "-c", "2", "-Q", env["BENCH_QUEUE"],
            "-n", f"bench{self.run_id}{mode.replace('-', '')}{round_no}@%h",
            "--without-mingle", "--without-gossip", "-l", "warning",
        ]  # fmt: skip
        if mode == "celery-events":
            command.append("-E")
        log = self.logs / f"worker-{mode}-{round_no}.log"
        with open(log, "wb") as out:
            worker = self.start(command, env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60 + total / 20
            while int(self.client.get(f"{counter}:done") or 0) < total:
                if worker.poll() is not None:
                    raise BenchError(f"{mode} worker exited ({worker.returncode}):\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{mode} worker too slow or stuck:\n{tail(log)}")
                time.sleep(0.25)
            first = float(self.client.get(f"{counter}:first") or "nan")
            last = float(self.client.get(f"{counter}:last") or "nan")
        finally:
            self.stop(worker)
        result: dict[str, Any] = {"tasks_per_s": (total - 1) / (last - first)}
        if mode == "stemtrace":
            result["events"] = count_events(self.client, env["BENCH_STREAM"])
        self.delete(
            env["BENCH_QUEUE"], env["BENCH_STREAM"],
            f"{counter}:done", f"{counter}:first", f"{counter}:last",
        )  # fmt: skip
        return result

    # -- processes and keys --------------------------------------------------

    def start(self, command: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C reaches only us, and we stop its whole group.
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **kw)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """Warm shutdown (stemtrace flushes), then SIGKILL whatever is left of its group."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # pool children that outlived it
        if process.poll() is None:
            process.wait(5)
        if process in self.processes:
            self.processes.remove(process)

    def delete(self, *keys: str) -> None:
        self.client.delete(*keys)

    def cleanup(self) -> None:
        for process in list(self.processes):
            self.stop(process, timeout=5.0)
        ours = list(self.client.scan_iter(match=f"*{self.prefix}*", count=1000))
        if ours:
            self.client.delete(*ours)
        # kombu records each worker's pidbox binding in shared sets: remove only ours.
        for key in self.client.scan_iter(match="_kombu.binding.*", count=1000):
            if self.client.type(key) != b"set":
                continue
            for member in self.client.smembers(key):
                if f"bench{self.run_id}".encode() in member or self.prefix.encode() in member:
                    self.client.srem(key, member)
        # ... and messages a stopped worker had not acked yet, which kombu would
        # restore to our (deleted) queues after the visibility timeout.
        for tag, raw in self.client.hscan_iter("unacked"):
            if self.prefix.encode() in raw:
                self.client.hdel("unacked", tag)
                self.client.zrem("unacked_index", tag)
        # ... and a deadline per binding table; drop those whose table is gone.
        for exchange in self.client.zrange("_kombu.binding_deadlines", 0, -1):
            if not self.client.exists(b"_kombu.binding." + exchange):
                self.client.zrem("_kombu.binding_deadlines", exchange)
        self.client.close()


def count_events(client: redis.Redis, stream: str) -> int:
    from stemtrace.events import decode_frame

    return sum(len(decode_frame(fields[b"d"]).events) for _, fields in client.xrange(stream))


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return f"(no log at {path})"


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Let ``kill <pid>`` run our clean-up, as Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure(run: Run) -> dict[str, Any]:
    rounds = run.args.rounds
    worker: dict[str, list[float]] = {m: [] for m in MODES}
    publish: dict[str, list[float]] = {m: [] for m in MODES}
    events: list[int] = []
    for round_no in range(rounds):
        # Rotate the order so no configuration always runs first or last.
        order = MODES[round_no % len(MODES) :] + MODES[: round_no % len(MODES)]
        for mode in order:
            sent = run.send(mode, round_no)
            publisher = sent.get("publisher")
            if publisher and (publisher["dropped"] or not sent.get("flushed")):
                print(f"  note: sender publisher {publisher}", file=sys.stderr)
            drained = run.drain(mode, round_no)
            worker[mode].append(drained["tasks_per_s"])
            publish[mode].append(sent["per_call_us"])
            extra = ""
            if "events" in drained:
                events.append(drained["events"])
                extra = f", {drained['events']} stemtrace events"
            print(
                f"round {round_no + 1}/{rounds} {LABELS[mode]:>10}: "
                f"{drained['tasks_per_s']:7.0f} tasks/s, "
                f"apply_async {sent['per_call_us']:6.0f} us/call{extra}",
                flush=True,
            )
    median_worker = {m: statistics.median(v) for m, v in worker.items()}
    median_publish = {m: statistics.median(v) for m, v in publish.items()}
    return {
        "settings": {
            "tasks": run.args.tasks,
            "rounds": rounds,
            "calls": run.args.calls,
            "broker": run.broker,
            "pool": "prefork",
            "concurrency": 2,
        },
        "worker_tasks_per_s": {"rounds": worker, "median": median_worker},
        "worker_ratio": {m: median_worker[m] / median_worker["plain"] for m in MODES[1:]},
        "apply_async_us": {"rounds": publish, "median": median_publish},
        "apply_async_ratio": {m: median_publish[m] / median_publish["plain"] for m in MODES[1:]},
        # sent + received + started + succeeded per task, plus worker online/heartbeats
        "stemtrace_events_per_round": events,
    }


def report(result: dict[str, Any]) -> str:
    w, wr = result["worker_tasks_per_s"]["median"], result["worker_ratio"]
    p, pr = result["apply_async_us"]["median"], result["apply_async_ratio"]
    s = result["settings"]
    verdict = "meets" if wr["stemtrace"] >= TARGET_RATIO else "BELOW"
    return "\n".join(
        [
            f"medians of {s['rounds']} interleaved rounds; {s['tasks']} no-op tasks per worker "
            f"run (prefork -c 2), {s['calls']} apply_async calls per sender run",
            f"worker throughput (tasks/s): plain {w['plain']:.0f}, "
            f"stemtrace {w['stemtrace']:.0f} (ratio {wr['stemtrace']:.2f}), "
            f"celery -E {w['celery-events']:.0f} (ratio {wr['celery-events']:.2f})",
            f"apply_async (us/call): plain {p['plain']:.0f}, "
            f"stemtrace {p['stemtrace']:.0f} (ratio {pr['stemtrace']:.2f}), "
            f"sent events {p['celery-events']:.0f} (ratio {pr['celery-events']:.2f})",
            f"stemtrace worker ratio {wr['stemtrace']:.3f} {verdict} the target {TARGET_RATIO:.2f}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capture_overhead",
        description="Worker throughput and apply_async cost: plain vs stemtrace vs celery -E.",
    )
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per worker run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=5000, help="timed apply_async calls per run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument("--host", default="127.0.0.1", help="Redis host")
    parser.add_argument("--port", type=int, default=6379, help="Redis port")
    parser.add_argument("--db", type=int, default=13, help="Redis database used only by this")
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1 or args.calls < 1:
        parser.error("need --tasks >= 2, --rounds >= 1, --calls >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    try:
        run.client.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {run.broker}: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.run_id}: logs in {run.logs}", flush=True)
    try:
        with sigterm_as_exit():
            result = measure(run)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping workers", file=sys.stderr)
        return 130
    finally:
        run.cleanup()
    shutil.rmtree(run.logs, ignore_errors=True)  # kept only when something failed
    print()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
