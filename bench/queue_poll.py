"""What one poll of the queues' lengths costs: round trips and milliseconds per poll.

    python -m bench.queue_poll [--queues 1,10,50] [--polls 20]

Needs Redis on 127.0.0.1:6379 (database 13, keys named after the run, deleted at the
end) and RabbitMQ at amqp://guest:guest@127.0.0.1:5672// (queues named after the run,
deleted at the end). Each queue holds a few messages; half of the Redis queues have
messages in a priority list too. The readers are the ones the consumer polls with
(stemtrace.transports.depths); "round trips" are their own count of requests sent.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis
from kombu import Connection, Producer

from stemtrace.transports.depths import AmqpDepthReader, DepthReader, RedisDepthReader, redis_keys

REDIS_URL = "redis://127.0.0.1:6379/13"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def measure(reader: DepthReader, queues: list[str], polls: int) -> tuple[float, float, bool]:
    """``(round trips per poll, median ms per poll, every count read)`` after a warm-up poll."""
    reader.read(queues)  # connects
    before = reader.round_trips
    times = []
    ok = True
    for _ in range(polls):
        started = time.perf_counter()
        found = reader.read(queues)
        times.append((time.perf_counter() - started) * 1000)
        ok = ok and all(d.messages is not None for d in found.values())
    return (reader.round_trips - before) / polls, statistics.median(times), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default="1,10,50")
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    print(f"{'broker':<9} {'queues':>6} {'round trips/poll':>17} {'ms/poll (median)':>17}")
    for count in (int(n) for n in args.queues.split(",")):
        names = [f"bench-{run}-{i}" for i in range(count)]
        client = redis.Redis.from_url(REDIS_URL)
        for i, name in enumerate(names):
            client.lpush(name, "a", "b")
            if i % 2:
                client.lpush(redis_keys(name)[2], "c")
        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for name in names:
                channel.queue_declare(name, durable=False, auto_delete=False)
                Producer(channel).publish("m", routing_key=name)
        try:
            for label, reader in (("redis", RedisDepthReader(REDIS_URL)),
                                  ("rabbitmq", AmqpDepthReader(AMQP_URL))):  # fmt: skip
                trips, ms, ok = measure(reader, names, args.polls)
                reader.close()
                note = "" if ok else "  (some queue could not be read)"
                print(f"{label:<9} {count:>6} {trips:>17.1f} {ms:>17.2f}{note}")
        finally:
            client.delete(*(k for name in names for k in redis_keys(name)))
            client.close()
            with Connection(AMQP_URL) as conn:
                channel = conn.channel()
                for name in names:
                    channel.queue_delete(name)


if __name__ == "__main__":
    main()
