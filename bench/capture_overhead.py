"""What capture costs: worker throughput and ``apply_async`` time, side by side.

Three configurations, run interleaved in one invocation (the machine is shared
and noisy, so only ratios measured together mean much):

* ``plain``: no stemtrace, no events;
* ``stemtrace``: ``stemtrace.init(app)`` in the sender and in the worker;
* ``celery-events``: Celery's own events (worker ``-E``,
  ``task_send_sent_event``), for comparison.

With ``--broker rabbitmq`` (or ``both``, the default, which interleaves the
two) Celery's broker is RabbitMQ and ``init(app)`` publishes its events there
too, to a durable fanout exchange named after the run; a queue bound to it
before the sender starts receives them, so that every event can be counted.
The counter and the time stamps stay in Redis either way.

Per round and configuration a sender process (``python -m bench.benchapp``)
times ``--calls`` ``apply_async`` calls to a throw-away queue, then pre-fills
the worker queue with ``--tasks`` no-op tasks while no worker runs. Then a real
``celery worker -P prefork -c 2`` drains it; each task INCRs a Redis counter,
and the first and last task stamp the time, so throughput is
``(tasks - 1) / (last - first)`` without polling in the timed window.

Usage, from the repository root, with Redis on 127.0.0.1:6379 and RabbitMQ on
127.0.0.1:5672::

    python -m bench.capture_overhead [--broker redis|rabbitmq|both] [--tasks N]
        [--rounds R] [--calls K] [--json PATH]
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from kombu import Connection

from bench import MODES, add_redis_options
from stemtrace.transports import describe_url

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"plain": "plain", "stemtrace": "stemtrace", "celery-events": "celery -E"}
BROKERS = ("redis", "rabbitmq")
BROKER_LABELS = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
TARGET_RATIO = 0.95


class BenchError(RuntimeError):
    pass


class Run:
    """One invocation: its keys in Redis, its queues and exchanges in RabbitMQ, its logs,
    the processes it started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.brokers = BROKERS if args.broker == "both" else (args.broker,)
        # Counters and time stamps, and the Celery broker of the Redis runs.
        self.redis_url = f"redis://{args.host}:{args.port}/{args.db}"
        self.client = redis.Redis.from_url(self.redis_url)
        self.amqp_url = args.amqp_url
        self.amqp: Connection | None = None
        self.amqp_names: set[str] = set()  # queues and exchanges of ours, each named alike
        self.logs = Path(tempfile.mkdtemp(prefix=f"bench-capture-{self.run_id}-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.prefix = f"bench-capture:{self.run_id}"

    def broker_url(self, broker: str) -> str:
        return self.amqp_url if broker == "rabbitmq" else self.redis_url

    def connect(self) -> None:
        """Fail early, with the address, when a broker of this run is not there."""
        self.client.ping()
        if "rabbitmq" in self.brokers:
            self.amqp = Connection(self.amqp_url, connect_timeout=5, heartbeat=0)
            self.amqp.ensure_connection(max_retries=1)

    def env(self, broker: str, mode: str, round_no: int) -> dict[str, str]:
        name = f"{self.prefix}:{{}}:{broker}:{mode}:{round_no}"
        env = {
            **os.environ,
            "BENCH_BROKER": self.broker_url(broker),
            "BENCH_REDIS": self.redis_url,
            "BENCH_QUEUE": name.format("q"),
            "BENCH_MODE": mode,
            "BENCH_STREAM": name.format("events"),
            "BENCH_COUNTER": name.format("count"),
            "BENCH_TOTAL": str(self.args.tasks),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "C_FORCE_ROOT": "1",
        }
        # A stray STEMTRACE_* setting (say, STEMTRACE_ENABLED=0) would skew the comparison.
        for key in [n for n in env if n.startswith("STEMTRACE_")]:
            del env[key]
        return env

    # -- one measurement -----------------------------------------------------

    def send(
        self, broker: str, mode: str, round_no: int, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Time apply_async and pre-fill the worker queue, in a sender process of ``mode``
        (``env``: the sender's environment, when not the measurement's own)."""
        env = env or self.env(broker, mode, round_no)
        throwaway = f"{self.prefix}:throwaway:{broker}:{mode}:{round_no}"
        if broker == "rabbitmq":
            # Celery declares a queue and an exchange named after each queue it sends to.
            self.amqp_names.update((throwaway, env["BENCH_QUEUE"]))
            if mode == "stemtrace":
                # Frames sent to a fanout exchange without a queue are dropped: bind one first.
                self.bind_events_queue(env["BENCH_STREAM"])
        command = [
            sys.executable, "-m", "bench.benchapp",
            "--calls", str(self.args.calls), "--throwaway", throwaway,
        ]  # fmt: skip
        log = self.logs / f"send-{broker}-{mode}-{round_no}.log"
        try:
            with open(log, "wb") as err:
                process = self.start(command, env, stdout=subprocess.PIPE, stderr=err)
                out, _ = process.communicate(timeout=300)
            if process.returncode != 0:
                raise BenchError(f"sender ({broker}, {mode}) failed:\n{tail(log)}")
            return dict(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            if broker == "rabbitmq":
                self.amqp_delete(throwaway)
            else:
                self.delete(throwaway, f"_kombu.binding.{throwaway}")

    def drain(self, broker: str, mode: str, round_no: int) -> dict[str, Any]:
        """Start a worker on the pre-filled queue; return its throughput once it is empty."""
        env = self.env(broker, mode, round_no)
        counter, total = env["BENCH_COUNTER"], self.args.tasks
        queued = self.queued(broker, env["BENCH_QUEUE"], total)
        if queued != total:
            raise BenchError(f"{broker} {mode}: expected {total} queued tasks, found {queued}")
        log = self.logs / f"worker-{broker}-{mode}-{round_no}.log"
        worker = self.start_worker(env, mode, f"{broker}{mode}{round_no}", log)
        try:
            deadline = time.monotonic() + 60 + total / 20
            # tasks done, worker CPU seconds, of which its main process's
            begun: tuple[int, float, float] | None = None
            while (done := int(self.client.get(f"{counter}:done") or 0)) < total:
                if begun is None and done:
                    begun = (done, *session_cpu(worker.pid))  # start-up left out
                if worker.poll() is not None:
                    raise BenchError(
                        f"{broker} {mode} worker exited ({worker.returncode}):\n{tail(log)}"
                    )
                if time.monotonic() > deadline:
                    raise BenchError(f"{broker} {mode} worker too slow or stuck:\n{tail(log)}")
                time.sleep(0.05)
            cpu, main_cpu = session_cpu(worker.pid)
            first = float(self.client.get(f"{counter}:first") or "nan")
            last = float(self.client.get(f"{counter}:last") or "nan")
        finally:
            self.stop(worker)
        result: dict[str, Any] = {"tasks_per_s": (total - 1) / (last - first)}
        if begun is not None and total > begun[0]:
            result["cpu_ms_per_task"] = (cpu - begun[1]) * 1e3 / (total - begun[0])
            result["main_cpu_ms_per_task"] = (main_cpu - begun[2]) * 1e3 / (total - begun[0])
        if mode == "stemtrace":
            if broker == "rabbitmq":
                result["events"] = self.count_amqp_events(env["BENCH_STREAM"])
            else:
                result["events"] = count_events(self.client, env["BENCH_STREAM"])
        self.delete(f"{counter}:done", f"{counter}:first", f"{counter}:last")
        if broker == "rabbitmq":
            self.amqp_delete(env["BENCH_QUEUE"], env["BENCH_STREAM"])
        else:
            self.delete(env["BENCH_QUEUE"], env["BENCH_STREAM"])
        return result

    # -- RabbitMQ ------------------------------------------------------------

    def queued(self, broker: str, queue: str, expected: int) -> int:
        """Tasks waiting in ``queue``: LLEN on Redis, a passive declare on RabbitMQ."""
        if broker == "redis":
            return int(self.client.llen(queue))
        # The sender has closed its connection, but the broker may still be routing
        # its last messages into the queue: give the count a moment to settle.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with self.amqp_channel() as channel:
                    count = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception as exc:  # amqp's NotFound when the sender never declared it
                raise BenchError(f"cannot count the tasks in {queue}: {exc}") from exc
            if count >= expected or time.monotonic() > deadline:
                return count
            time.sleep(0.1)

    def bind_events_queue(self, stream: str) -> None:
        from stemtrace.transports.amqp import exchange_for

        self.amqp_names.add(stream)
        with self.amqp_channel() as channel:
            exchange = exchange_for(stream)(channel)
            exchange.declare()
            channel.queue_declare(queue=stream, durable=True, auto_delete=False)
            channel.queue_bind(queue=stream, exchange=stream, routing_key="")

    def count_amqp_events(self, stream: str) -> int:
        """Consume the queue bound to the events exchange; count the events in its frames."""
        from stemtrace.core.events import decode_frame

        events = 0
        with self.amqp_channel() as channel:
            while True:
                message = channel.basic_get(queue=stream, no_ack=True)
                if message is None:
                    time.sleep(0.2)  # anything still being routed
                    if channel.queue_declare(queue=stream, passive=True).message_count == 0:
                        return events
                    continue
                events += len(decode_frame(message.body).events)

    @contextlib.contextmanager
    def amqp_channel(self) -> Iterator[Any]:
        """A channel of its own per use: a failed (say, passive) declare closes it."""
        assert self.amqp is not None
        channel = self.amqp.channel()
        try:
            yield channel
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def amqp_delete(self, *names: str) -> None:
        """Delete the queues and the exchanges of these names (both are named alike)."""
        if self.amqp is None:
            return
        for name in names:
            for delete in ("queue_delete", "exchange_delete"):
                with contextlib.suppress(Exception), self.amqp_channel() as channel:
                    getattr(channel, delete)(name)
            self.amqp_names.discard(name)

    # -- processes and keys --------------------------------------------------

    def start_worker(
        self,
        env: dict[str, str],
        mode: str,
        node: str,
        log: Path,
        *,
        pool: tuple[str, ...] = ("-P", "prefork", "-c", "2"),
        wrapper: tuple[str, ...] = (),
        options: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        """A ``celery worker`` of ``mode`` on ``env``'s queue (run by ``wrapper``, if any)."""
        command = [
            *wrapper, sys.executable, "-m", "celery", "-A", "bench.benchapp:app", "worker",
            *pool, "-Q", env["BENCH_QUEUE"], "-n", f"bench{self.run_id}{node.replace('-', '')}@%h",
            "--without-mingle", "--without-gossip", *options, "-l", "warning",
        ]  # fmt: skip
        if mode == "celery-events":
            command.append("-E")
        with open(log, "wb") as out:
            return self.start(command, env, stdout=out, stderr=subprocess.STDOUT)

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
        if self.amqp is not None:
            self.amqp_delete(*sorted(self.amqp_names))
            with contextlib.suppress(Exception):
                self.amqp.release()
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
    from stemtrace.core.events import decode_frame

    return sum(len(decode_frame(fields[b"d"]).events) for _, fields in client.xrange(stream))


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return f"(no log at {path})"


_TICKS = os.sysconf("SC_CLK_TCK")


def session_cpu(leader: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by the processes of ``leader``'s session,
    and by ``leader`` alone.

    The worker starts in a session of its own: its main process (the leader)
    and pool children, nothing else.
    """
    total = main = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == leader:  # state, ppid, pgrp, session, ...
            used = int(fields[11]) + int(fields[12])  # utime, stime
            total += used
            if int(entry.name) == leader:
                main = used
    return total / _TICKS, main / _TICKS


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
    rounds, brokers = run.args.rounds, run.brokers
    worker = {b: {m: [] for m in MODES} for b in brokers}
    cpu: dict[str, dict[str, list[float]]] = {b: {m: [] for m in MODES} for b in brokers}
    main_cpu: dict[str, dict[str, list[float]]] = {b: {m: [] for m in MODES} for b in brokers}
    publish = {b: {m: [] for m in MODES} for b in brokers}
    events: dict[str, list[int]] = {b: [] for b in brokers}
    missing: dict[str, list[int]] = {b: [] for b in brokers}
    for round_no in range(rounds):
        # Rotate the order so no configuration always runs first or last.
        order = MODES[round_no % len(MODES) :] + MODES[: round_no % len(MODES)]
        for broker in brokers if round_no % 2 == 0 else brokers[::-1]:
            for mode in order:
                sent = run.send(broker, mode, round_no)
                publisher = sent.get("publisher")
                if publisher and (publisher["dropped"] or not sent.get("flushed")):
                    print(f"  note: {broker} sender publisher {publisher}", file=sys.stderr)
                drained = run.drain(broker, mode, round_no)
                worker[broker][mode].append(drained["tasks_per_s"])
                if "cpu_ms_per_task" in drained:
                    cpu[broker][mode].append(drained["cpu_ms_per_task"])
                    main_cpu[broker][mode].append(drained["main_cpu_ms_per_task"])
                publish[broker][mode].append(sent["per_call_us"])
                extra = ""
                if "events" in drained:
                    # At least: what the sender published, and received, started and
                    # succeeded per task (plus worker online, heartbeats, offline).
                    least = (publisher["sent"] if publisher else 0) + 3 * run.args.tasks
                    events[broker].append(drained["events"])
                    missing[broker].append(max(0, least - drained["events"]))
                    extra = f", {drained['events']} stemtrace events"
                    if drained["events"] < least:
                        extra += f" (MISSING at least {least - drained['events']})"
                if "cpu_ms_per_task" in drained:
                    extra = (
                        f", worker CPU {drained['cpu_ms_per_task']:.2f} ms/task"
                        f" (main process {drained['main_cpu_ms_per_task']:.2f})" + extra
                    )
                print(
                    f"round {round_no + 1}/{rounds} {BROKER_LABELS[broker]:>8} "
                    f"{LABELS[mode]:>10}: {drained['tasks_per_s']:7.0f} tasks/s, "
                    f"apply_async {sent['per_call_us']:6.0f} us/call{extra}",
                    flush=True,
                )
    per_broker = {}
    for broker in brokers:
        median_worker = {m: statistics.median(v) for m, v in worker[broker].items()}
        median_publish = {m: statistics.median(v) for m, v in publish[broker].items()}
        per_broker[broker] = {
            "broker": describe_url(run.broker_url(broker)),
            "worker_tasks_per_s": {"rounds": worker[broker], "median": median_worker},
            "worker_ratio": {m: median_worker[m] / median_worker["plain"] for m in MODES[1:]},
            # The same, paired: the median of each round's own ratio, so that a slow
            # spell of the machine weighs on one round's pair, not on one side.
            "worker_ratio_paired": {
                m: paired(worker[broker][m], worker[broker]["plain"]) for m in MODES[1:]
            },
            "worker_cpu_ratio_paired": {
                m: paired(cpu[broker]["plain"], cpu[broker][m])
                for m in MODES[1:]
                if len(cpu[broker][m]) == len(cpu[broker]["plain"]) == rounds
            },
            # CPU the worker's processes spent per task, start-up left out; its
            # ratio is plain / configuration, so that higher is better, as above.
            "worker_cpu_ms_per_task": {
                "rounds": cpu[broker],
                "median": {m: statistics.median(v) for m, v in cpu[broker].items() if v},
            },
            # The main process alone: it takes every message and feeds the pool, so
            # with cores to spare its CPU per task bounds the worker's throughput.
            "main_cpu_ms_per_task": {
                "rounds": main_cpu[broker],
                "median": {m: statistics.median(v) for m, v in main_cpu[broker].items() if v},
            },
            "main_cpu_ratio_paired": {
                m: paired(main_cpu[broker]["plain"], main_cpu[broker][m])
                for m in MODES[1:]
                if len(main_cpu[broker][m]) == len(main_cpu[broker]["plain"]) == rounds
            },
            "apply_async_us": {"rounds": publish[broker], "median": median_publish},
            "apply_async_ratio": {
                m: median_publish[m] / median_publish["plain"] for m in MODES[1:]
            },
            # sent + received + started + succeeded per task, plus worker online/heartbeats
            "stemtrace_events_per_round": events[broker],
            "stemtrace_events_missing_per_round": missing[broker],
        }
    return {
        "settings": {
            "tasks": run.args.tasks,
            "rounds": rounds,
            "calls": run.args.calls,
            "counters": run.redis_url,
            "pool": "prefork",
            "concurrency": 2,
        },
        "brokers": per_broker,
    }


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"medians of {s['rounds']} interleaved rounds; {s['tasks']} no-op tasks per worker "
        f"run (prefork -c 2), {s['calls']} apply_async calls per sender run"
    ]
    header = (
        f"{'':<10} {'worker tasks/s':>14} {'/plain':>6} {'worker CPU ms/task':>18}"
        f" {'plain/':>6} {'apply_async us':>14} {'/plain':>6}"
    )
    for broker, numbers in result["brokers"].items():
        w, wr = numbers["worker_tasks_per_s"]["median"], numbers["worker_ratio"]
        c = numbers["worker_cpu_ms_per_task"]["median"]
        p, pr = numbers["apply_async_us"]["median"], numbers["apply_async_ratio"]
        lines += ["", f"{BROKER_LABELS[broker]} ({numbers['broker']})", header]
        for mode in MODES:
            wratio, cratio, pratio = (
                (f"{wr[mode]:6.2f}", _ratio(c, "plain", mode), f"{pr[mode]:6.2f}")
                if mode != "plain"
                else ("", "", "")
            )
            cpu = f"{c[mode]:18.2f}" if mode in c else f"{'?':>18}"
            row = (
                f"{LABELS[mode]:<10} {w[mode]:14.0f} {wratio:>6} {cpu} {cratio:>6}"
                f" {p[mode]:14.0f} {pratio:>6}"
            )
            lines.append(row.rstrip())
        ratio = wr["stemtrace"]
        verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
        missing = sum(numbers["stemtrace_events_missing_per_round"])
        lost = f", {missing} MISSING" if missing else ", none missing"
        pairs = numbers["worker_ratio_paired"]
        cpu_pairs = numbers["worker_cpu_ratio_paired"]
        lines.append(
            "paired (median of each round's ratio): throughput "
            + ", ".join(f"{LABELS[m]} {pairs[m]:.2f}" for m in MODES[1:])
            + ("; CPU " + ", ".join(f"{LABELS[m]} {v:.2f}" for m, v in cpu_pairs.items())
               if cpu_pairs else "")
        )  # fmt: skip
        main = numbers["main_cpu_ms_per_task"]["median"]
        if main:
            lines.append(
                "worker main process CPU ms/task (the busiest process): "
                + ", ".join(f"{LABELS[m]} {main[m]:.2f}" for m in MODES if m in main)
                + "; paired plain/ "
                + ", ".join(
                    f"{LABELS[m]} {v:.2f}" for m, v in numbers["main_cpu_ratio_paired"].items()
                )
            )
        lines.append(
            f"stemtrace worker ratio {ratio:.3f} {verdict} the target {TARGET_RATIO:.2f}; "
            f"stemtrace events per round {numbers['stemtrace_events_per_round']}{lost}"
        )
    return "\n".join(lines)


def paired(tops: list[float], bottoms: list[float]) -> float:
    """The median of the rounds' ratios ``tops[i] / bottoms[i]``."""
    return statistics.median(top / bottom for top, bottom in zip(tops, bottoms, strict=True))


def _ratio(values: dict[str, float], top: str, bottom: str) -> str:
    return f"{values[top] / values[bottom]:6.2f}" if top in values and bottom in values else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capture_overhead",
        description="Worker throughput and apply_async cost: plain vs stemtrace vs celery -E.",
    )
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per worker run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=5000, help="timed apply_async calls per run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--broker",
        choices=(*BROKERS, "both"),
        default="both",
        help="Celery broker (and so stemtrace transport) to measure; both: interleaved",
    )
    parser.add_argument(
        "--amqp-url",
        default="amqp://guest:guest@127.0.0.1:5672//",
        help="RabbitMQ URL (broker rabbitmq)",
    )
    add_redis_options(parser, db_help="Redis database used only by this (counters too)")
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1 or args.calls < 1:
        parser.error("need --tasks >= 2, --rounds >= 1, --calls >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    try:
        run.connect()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {run.redis_url}: {exc}", file=sys.stderr)
        shutil.rmtree(run.logs, ignore_errors=True)
        return 2
    except Exception as exc:
        print(
            f"cannot reach RabbitMQ at {describe_url(run.amqp_url)}: {exc} "
            "(--broker redis measures Redis alone)",
            file=sys.stderr,
        )
        run.cleanup()
        shutil.rmtree(run.logs, ignore_errors=True)
        return 2
    return conclude(run, measure, report, args.json)


def conclude(
    run: Run,
    measure: Callable[[Any], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    json_path: Path | None,
) -> int:
    """Measure, clean up whatever happens, then print (and maybe write) the numbers."""
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
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
