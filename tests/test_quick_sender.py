"""A script that sends tasks and exits at once delivers every event, with any broker pairing.

With an AMQP broker and a Redis transport, the transport's first import once
happened in the sending thread while the interpreter exited ("can't register
atexit after shutdown"), and every ``sent`` event was lost.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
import redis
from kombu import Connection
from kombu import Queue as KombuQueue

from stemtrace.core.events import decode_frame
from stemtrace.transports import open_reader
from tests.support import REDIS_HOST, REDIS_PORT, ROOT

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = f"redis://{REDIS_HOST}:{REDIS_PORT}/14"
SENT = 15

SCRIPT = """
import stemtrace
from celery import Celery

app = Celery("quick", broker={broker!r}, set_as_current=False)
stemtrace.init(app, transport_url={transport!r}, stream={stream!r})


@app.task(name="quick.add")
def add(x, y):
    return x + y


for i in range({sent}):
    add.apply_async((i, i), queue={queue!r})
"""


@pytest.mark.parametrize(
    ("broker", "transport"),
    [(AMQP, REDIS), (REDIS, REDIS), (AMQP, AMQP)],
    ids=["amqp-broker-redis-transport", "redis-redis", "rabbitmq-transport"],
)
def test_a_script_that_sends_and_exits_loses_nothing(
    broker: str, transport: str, redis_available: None
) -> None:
    stream = f"stemtrace:quick:{uuid.uuid4().hex[:8]}"
    queue = f"quick-{uuid.uuid4().hex[:8]}"
    # A RabbitMQ transport keeps frames only once a server's queue exists: declare it first.
    reader = open_reader(transport, stream=stream, queue=f"{stream}-reader")
    try:
        code = SCRIPT.format(broker=broker, transport=transport, stream=stream, sent=SENT,
                             queue=queue)  # fmt: skip
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "atexit" not in done.stderr, done.stderr
        events = []
        position = None
        for _ in range(20):
            entries = reader.read(position, 100, 0.2)
            for _, frame in entries:
                events.extend(decode_frame(frame).events)
            if entries:
                position = entries[-1][0]
                reader.commit(position)
            elif len(events) >= SENT:
                break
        sent = [e for e in events if e["kind"] == "sent"]
        assert len(sent) == SENT, done.stderr
    finally:
        reader.close()
        _clean(broker, transport, stream, queue)


def _clean(broker: str, transport: str, stream: str, queue: str) -> None:
    if transport.startswith("redis"):
        client = redis.Redis.from_url(transport)
        client.delete(stream)
        client.close()
    else:
        with Connection(AMQP) as conn:
            KombuQueue(f"{stream}-reader", channel=conn.channel()).delete()
    if broker.startswith("redis"):
        client = redis.Redis.from_url(broker)
        client.delete(queue)
        client.close()
    else:
        with Connection(AMQP) as conn:
            KombuQueue(queue, channel=conn.channel()).delete()
