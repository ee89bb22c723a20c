"""Transports carry frames of events from capture to the server.

Two small interfaces, :class:`Sender` and :class:`Reader`, with an
implementation per URL scheme (Redis Streams, RabbitMQ, in-process memory),
imported only when that scheme is used. Frames are opaque bytes here (see
:mod:`stemtrace.core.events` for what is inside).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit


class Sender(Protocol):
    """Delivers frames; raises on failure so the caller can keep them and retry."""

    def send(self, frames: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class Reader(Protocol):
    """Reads frames after a position; positions are opaque strings that sort in stream order."""

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        """Up to ``count`` ``(position, frame)`` pairs after ``after`` (``None``: from the
        start), waiting up to ``block`` seconds for the first one. A reader in a consumer
        group ignores ``after``: the group keeps the position, not the store."""
        ...

    def lag(self, after: str | None) -> float | None:
        """Seconds between the newest entry and ``after``, when the transport knows."""
        ...

    def commit(self, position: str) -> None:
        """The store has written everything up to ``position`` (RabbitMQ acks here)."""
        ...

    def close(self) -> None: ...


REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
MEMORY_SCHEMES = frozenset({"memory"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
SUPPORTED = REDIS_SCHEMES | MEMORY_SCHEMES | AMQP_SCHEMES


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def is_supported(url: str) -> bool:
    return scheme_of(url) in SUPPORTED


def _unsupported(url: str, what: str) -> ValueError:
    scheme = scheme_of(url) or "a URL without scheme"
    names = ", ".join(f"{s}://" for s in sorted(SUPPORTED))
    return ValueError(f"stemtrace: cannot {what} {scheme}:// (supported: {names})")


def open_reader(
    url: str,
    *,
    stream: str,
    queue: str = "stemtrace",
    group: str | None = None,
    consumer: str = "stemtrace",
    claim_idle: float = 60.0,
) -> Reader:
    """A reader for ``url``, chosen by its scheme; ``queue`` names the AMQP queue (shared
    by a group). With ``group``, Redis reads as ``consumer`` of that consumer group and
    claims entries other consumers left pending ``claim_idle`` seconds."""
    scheme = scheme_of(url)
    if scheme in REDIS_SCHEMES:
        if group is not None:
            from stemtrace.transports.redis_group import RedisGroupReader

            return RedisGroupReader(
                url, stream=stream, group=group, consumer=consumer, claim_idle=claim_idle
            )
        from stemtrace.transports.redis import RedisStreamReader

        return RedisStreamReader(url, stream=stream)
    if scheme in MEMORY_SCHEMES:
        if group is not None:
            raise ValueError("stemtrace: consumer groups need Redis or RabbitMQ, not memory://")
        from stemtrace.transports.memory import MemoryReader

        return MemoryReader(url, stream=stream)
    if scheme in AMQP_SCHEMES:
        from stemtrace.transports.amqp import AmqpReader

        return AmqpReader(url, stream=stream, queue=queue, group=group, consumer=consumer)
    raise _unsupported(url, "read events from")


def open_sender(url: str, *, stream: str, maxlen: int) -> Sender:
    """A sender for ``url``, chosen by its scheme."""
    scheme = scheme_of(url)
    if scheme in REDIS_SCHEMES:
        from stemtrace.transports.redis import RedisStreamSender

        return RedisStreamSender(url, stream=stream, maxlen=maxlen)
    if scheme in MEMORY_SCHEMES:
        from stemtrace.transports.memory import MemorySender

        return MemorySender(url, stream=stream, maxlen=maxlen)
    if scheme in AMQP_SCHEMES:
        from stemtrace.transports.amqp import AmqpSender

        return AmqpSender(url, stream=stream, maxlen=maxlen)
    raise _unsupported(url, "publish events to")


def describe_url(url: str) -> str:
    """``url`` without its password, for log lines."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
