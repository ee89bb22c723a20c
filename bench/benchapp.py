"""The Celery app of the capture-overhead benchmark, in the worker and in the sender.

Built from environment variables so that one module serves every
configuration (``python -m celery -A bench.benchapp:app worker`` and
``python -m bench.benchapp``):

``BENCH_BROKER``   Celery broker URL: Redis (a private database number) or
                   RabbitMQ (``amqp://...``). ``init(app)`` publishes its
                   events to it.
``BENCH_REDIS``    Redis URL the no-op task counts and stamps the time in
                   (default: ``BENCH_BROKER`` when that is Redis).
``BENCH_QUEUE``    queue the worker consumes and the sender pre-fills.
``BENCH_MODE``     ``plain`` | ``stemtrace`` | ``celery-events``.
``BENCH_STREAM``   stemtrace stream key, or exchange name on RabbitMQ (mode
                   ``stemtrace``).
``BENCH_COUNTER``  key prefix the no-op task counts under.
``BENCH_TOTAL``    tasks in the batch; the task that makes the count reach it
                   stamps the end time.

Run as a script, it is the sending side: it times ``--calls`` ``apply_async``
calls to a throw-away queue, then pre-fills ``BENCH_QUEUE`` with
``BENCH_TOTAL`` tasks, and prints one JSON line. It runs in a process of its
own because ``init(app)`` and Celery's settings are per process in effect
(signal receivers are process-global).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import redis
from celery import Celery

from bench import MODES

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/13")
COUNTS = os.environ.get(
    "BENCH_REDIS", BROKER if BROKER.startswith("redis") else "redis://127.0.0.1:6379/13"
)
QUEUE = os.environ.get("BENCH_QUEUE", "bench-capture")
MODE = os.environ.get("BENCH_MODE", "plain")
STREAM = os.environ.get("BENCH_STREAM", "bench-capture:events")
COUNTER = os.environ.get("BENCH_COUNTER", "bench-capture:counter")
TOTAL = int(os.environ.get("BENCH_TOTAL", "0"))

if MODE not in MODES:
    raise SystemExit(f"BENCH_MODE must be one of {', '.join(MODES)}, not {MODE!r}")

app = Celery("benchapp", broker=BROKER, set_as_current=False)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if MODE == "celery-events":
    app.conf.update(task_send_sent_event=True, worker_send_task_events=True)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """One connection per process (redis-py replaces its pool after a fork)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(COUNTS)
    return _client


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """Count itself; the first and the last task of the batch stamp the clock."""
    client = _redis()
    done = client.incr(f"{COUNTER}:done")
    if done == 1:
        client.set(f"{COUNTER}:first", repr(time.time()))
    if done == TOTAL:
        client.set(f"{COUNTER}:last", repr(time.time()))


capture: Any = None
if MODE == "stemtrace":
    import stemtrace

    capture = stemtrace.init(app, stream=STREAM)


def _send(calls: int, warmup: int, throwaway: str) -> dict[str, Any]:
    for _ in range(warmup):  # connection, queue declaration, publisher thread
        noop.apply_async(queue=throwaway)
    started = time.perf_counter()
    for _ in range(calls):
        noop.apply_async(queue=throwaway)
    per_call_us = (time.perf_counter() - started) / calls * 1e6

    started = time.perf_counter()
    for _ in range(TOTAL):
        noop.apply_async()
    prefill_s = time.perf_counter() - started

    result: dict[str, Any] = {"mode": MODE, "per_call_us": per_call_us, "prefill_s": prefill_s}
    if capture is not None:
        # The publisher's thread is a daemon: flush so the stream holds every
        # "sent" event before this process exits (not timed).
        result["flushed"] = capture.publisher.flush(10.0)
        result["publisher"] = capture.publisher.stats()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, required=True, help="timed apply_async calls")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--throwaway", required=True, help="queue the timed calls go to")
    args = parser.parse_args(argv)
    print(json.dumps(_send(args.calls, args.warmup, args.throwaway)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
