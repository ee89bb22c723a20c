"""How many messages wait in the broker's queues: a read-only look, never a consume.

One small interface, :class:`DepthReader`, with a reader per broker, chosen
by URL scheme (:func:`open_depth_reader`):

* Redis (kombu's transport): a queue is a list under the queue's name, plus
  one list per priority step (``<queue>\\x06\\x16<step>`` for the steps 3, 6 and
  9; step 0 is the bare name). ``LLEN`` of each, every queue in one pipelined
  round trip. Redis cannot say who consumes a queue: ``consumers`` is ``None``.
  kombu's ``global_keyprefix`` transport option is not followed.
* RabbitMQ: a passive ``queue.declare`` per queue gives its ready messages and
  its consumers; one round trip each. A queue that does not exist closes the
  channel (404): that queue reads "no such queue" and the channel is reopened.
* kombu's in-process ``memory://`` transport (``stemtrace demo``): its queues
  live in this process (``kombu.transport.memory.Channel.queues``); each one's
  ``qsize()``, no round trip. It cannot say who consumes: ``consumers`` is ``None``.

A broker that cannot be reached gives an error per queue: :meth:`read` never
raises, and sockets time out within :data:`TIMEOUT` seconds, so a poll cannot
stall the consumer that makes it. ``round_trips`` counts what each reader sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from stemtrace.transports import AMQP_SCHEMES, MEMORY_SCHEMES, REDIS_SCHEMES, scheme_of

TIMEOUT: Final = 2.0
"""Seconds a connect, read or write to the broker may take."""
KOMBU_SEP: Final = "\x06\x16"
"""kombu's Redis transport: between a queue's name and its priority step."""
KOMBU_PRIORITY_STEPS: Final = (0, 3, 6, 9)
"""kombu's Redis transport: the priority steps, each a list of its own (0: the bare name)."""
NO_SUCH_QUEUE: Final = "no such queue"
NOT_AMQP_NAME: Final = "not a RabbitMQ queue name (longer than 255 bytes)"
QUEUE_ERRORS: Final = frozenset({NO_SUCH_QUEUE, NOT_AMQP_NAME})
"""Errors of one queue, not of the broker: the reader itself is fine."""


@dataclass(frozen=True, slots=True)
class Depth:
    """One queue as the broker counts it now."""

    messages: int | None = None
    """Messages ready in the queue (not those delivered and unacknowledged)."""
    consumers: int | None = None
    """Consumers attached (RabbitMQ); ``None`` where the broker cannot say (Redis)."""
    error: str | None = None
    """Why the queue could not be read (then both counts are ``None``)."""


class DepthReader(Protocol):
    """Reads queue depths; one per polling thread."""

    round_trips: int
    """Requests sent to the broker so far (a pipeline counts once)."""

    def read(self, queues: Sequence[str]) -> dict[str, Depth]:
        """Each of ``queues`` as the broker counts it now; never raises."""
        ...

    def close(self) -> None: ...


def open_depth_reader(url: str) -> DepthReader | None:
    """A reader for the broker at ``url``; ``None`` for a scheme with no queues to read."""
    scheme = scheme_of(url)
    if scheme in REDIS_SCHEMES:
        return RedisDepthReader(url)
    if scheme in AMQP_SCHEMES:
        return AmqpDepthReader(url)
    if scheme in MEMORY_SCHEMES:
        return MemoryDepthReader()
    return None


def redis_keys(queue: str) -> list[str]:
    """The lists kombu keeps ``queue``'s messages in, one per priority step."""
    return [queue if step == 0 else f"{queue}{KOMBU_SEP}{step}" for step in KOMBU_PRIORITY_STEPS]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__


class RedisDepthReader:
    """``LLEN`` of every queue's lists in one pipeline (read-only, no transaction)."""

    def __init__(self, url: str) -> None:
        from stemtrace.transports.redis import connect

        self.client = connect(url, timeout=TIMEOUT)
        self.round_trips = 0

    def read(self, queues: Sequence[str]) -> dict[str, Depth]:
        queues = list(dict.fromkeys(queues))
        if not queues:
            return {}
        steps = len(KOMBU_PRIORITY_STEPS)
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                for key in redis_keys(queue):
                    pipe.llen(key)
            self.round_trips += 1
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except Exception as exc:  # down, timed out, refused: every queue says so
            self._reset()
            return dict.fromkeys(queues, Depth(error=_describe(exc)))
        found = {}
        for index, queue in enumerate(queues):
            lengths = replies[index * steps : (index + 1) * steps]
            bad = next((r for r in lengths if isinstance(r, BaseException)), None)
            if bad is not None:  # WRONGTYPE: the key is not one of kombu's lists
                found[queue] = Depth(error=_describe(bad))
            else:
                found[queue] = Depth(messages=sum(int(n) for n in lengths))
        return found

    def _reset(self) -> None:
        """Drop the pooled sockets, so the next read connects afresh."""
        with contextlib.suppress(Exception):
            self.client.connection_pool.disconnect()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class AmqpDepthReader:
    """A passive ``queue.declare`` per queue: counts without creating or consuming."""

    def __init__(self, url: str) -> None:
        from kombu.connection import Connection

        self.connection: Any = Connection(
            url,
            connect_timeout=TIMEOUT,
            heartbeat=0,
            transport_options={"read_timeout": TIMEOUT, "write_timeout": TIMEOUT},
        )
        self.channel: Any = None
        self.round_trips = 0

    def read(self, queues: Sequence[str]) -> dict[str, Depth]:
        found: dict[str, Depth] = {}
        for queue in dict.fromkeys(queues):
            if len(queue.encode("utf-8", "surrogatepass")) > 255:  # a task's hostile queue name
                found[queue] = Depth(error=NOT_AMQP_NAME)
                continue
            try:
                found[queue] = self._declare(queue)
            except Exception as exc:
                if _is_not_found(exc):  # the broker closed the channel: open another
                    self.channel = None
                    found[queue] = Depth(error=NO_SUCH_QUEUE)
                    continue
                if _is_channel_error(exc):  # refused for this queue only (403, 406 ...)
                    self.channel = None
                    found[queue] = Depth(error=_describe(exc))
                    continue
                self._reset()  # down or timed out: the rest cannot be read now either
                error = Depth(error=_describe(exc))
                found.update((q, error) for q in queues if q not in found)
                break
        return found

    def _declare(self, queue: str) -> Depth:
        if self.channel is None:
            if not self.connection.connected:
                self.round_trips += 1  # the handshake: several frames, counted once
                self.connection.ensure_connection(max_retries=0)
            self.round_trips += 1
            self.channel = self.connection.channel()
        self.round_trips += 1
        declared = self.channel.queue_declare(queue=queue, passive=True)
        return Depth(messages=int(declared.message_count), consumers=int(declared.consumer_count))

    def _reset(self) -> None:
        self.channel = None
        with contextlib.suppress(Exception):
            self.connection.collect()  # forget the dead socket without talking to it

    def close(self) -> None:
        self.channel = None
        with contextlib.suppress(Exception):
            self.connection.release()


def _is_channel_error(exc: BaseException) -> bool:
    """An error that closed the channel, not the connection (py-amqp's ``ChannelError``)."""
    return any(cls.__name__ == "ChannelError" for cls in type(exc).__mro__)


class MemoryDepthReader:
    """kombu's ``memory://`` broker in this process: each queue's size, never a ``get``.

    Every ``memory://`` URL shares the one process-global set of queues, so the
    URL's host says nothing. kombu is imported lazily: a process whose Celery
    broker is not the memory transport finds every queue missing.
    """

    def __init__(self) -> None:
        self.round_trips = 0

    def read(self, queues: Sequence[str]) -> dict[str, Depth]:
        from kombu.transport.memory import Channel

        existing: dict[str, Any] = Channel.queues
        found = {}
        for queue in dict.fromkeys(queues):
            held = existing.get(queue)
            found[queue] = (
                Depth(error=NO_SUCH_QUEUE) if held is None else Depth(messages=held.qsize())
            )
        return found

    def close(self) -> None:
        pass


def _is_not_found(exc: BaseException) -> bool:
    """RabbitMQ's 404 NOT_FOUND on a passive declare (py-amqp's ``NotFound``)."""
    return type(exc).__name__ == "NotFound" or getattr(exc, "reply_code", None) == 404
