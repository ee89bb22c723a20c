"""RabbitMQ transport (through kombu, which Celery already brings).

Capture publishes each frame as one persistent message to a durable fanout
exchange named after the stream (``stemtrace:events``). Every server reads
from its own durable queue bound to that exchange, so several servers each
get every event, and a stopped server finds what it missed when it comes
back. Servers given one consumer group (``--group``) share instead one durable
queue named from the group, and RabbitMQ hands each message to one of them
(competing consumers). Messages are acknowledged only after the store has written them
(:meth:`AmqpReader.commit`): at-least-once delivery, which the idempotent
store turns into exactly-once effects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

QUEUE_MAX_LENGTH = 1_000_000
"""Most frames a server's queue holds while that server is away (oldest dropped)."""


def exchange_for(stream: str) -> Exchange:
    return Exchange(stream, type="fanout", durable=True, auto_delete=False)


class AmqpSender:
    """Publishes frames; raises on any failure so the publisher keeps them and retries."""

    def __init__(self, url: str, *, stream: str, maxlen: int) -> None:
        self.exchange = exchange_for(stream)
        self.connection = Connection(url, connect_timeout=2, heartbeat=0)
        self.connection.transport  # noqa: B018 - loads kombu's transport modules now, not at exit
        self.producer: Any = None

    def send(self, frames: Sequence[bytes]) -> None:
        if self.producer is None:
            self.connection.ensure_connection(max_retries=1)
            channel = self.connection.channel()
            self.exchange(channel).declare()
            self.producer = self.connection.Producer(channel, exchange=self.exchange)
        for frame in frames:
            self.producer.publish(
                frame,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                retry=False,
            )

    def close(self) -> None:
        self.producer = None
        self.connection.release()


class AmqpReader:
    """Consumes one durable queue bound to the stream's exchange; acks on commit."""

    def __init__(
        self, url: str, *, stream: str, queue: str, group: str | None = None,
        consumer: str = "stemtrace",
    ) -> None:  # fmt: skip
        self.group = group
        self.consumer_name = consumer
        self.exchange = exchange_for(stream)
        self.queue = Queue(
            queue,
            exchange=self.exchange,
            durable=True,
            auto_delete=False,
            queue_arguments={"x-max-length": QUEUE_MAX_LENGTH, "x-overflow": "drop-head"},
        )
        self.connection = Connection(url, connect_timeout=5, heartbeat=0)
        self.connection.ensure_connection(max_retries=1)
        self.channel = self.connection.channel()
        self.bound = self.queue(self.channel)
        self.bound.declare()
        self._pending: list[tuple[str, bytes]] = []
        self.consumer = self.connection.Consumer(
            self.bound, channel=self.channel, callbacks=[self._on_message], accept=None,
            no_ack=False,
        )  # fmt: skip
        self.consumer.qos(prefetch_count=500)
        self.consumer.consume()

    def _on_message(self, body: Any, message: Any) -> None:
        raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        self._pending.append((str(message.delivery_tag), raw))

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        try:
            self.connection.drain_events(timeout=block)
            while len(self._pending) < count:
                self.connection.drain_events(timeout=0.001)
        except TimeoutError:
            pass
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    def commit(self, position: str) -> None:
        """Acknowledge every message up to ``position`` (a delivery tag)."""
        self.channel.basic_ack(int(position), multiple=True)

    def lag(self, after: str | None) -> float | None:
        return None

    def backlog(self) -> int | None:
        """Messages waiting in this server's queue."""
        try:
            declared = self.channel.queue_declare(queue=self.queue.name, passive=True)
            return int(declared.message_count)
        except Exception:
            return None

    def group_status(self) -> dict[str, Any] | None:
        """The group and the queue its consumers share, for ``/api/health``."""
        if self.group is None:
            return None
        return {"name": self.group, "consumer": self.consumer_name, "queue": self.queue.name}

    def close(self) -> None:
        """Unacknowledged frames go back to the queue for the next reader."""
        with contextlib.suppress(Exception):
            self.consumer.cancel()
        with contextlib.suppress(Exception):
            self.connection.release()
