"""Redis Streams transport: each frame is one stream entry ``{"d": frame}``."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

FRAME_FIELD = b"d"


def connect(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: the caller retries on its own schedule."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisStreamSender:
    """Appends frames with pipelined ``XADD ... MAXLEN ~ maxlen``."""

    def __init__(self, url: str, *, stream: str, maxlen: int) -> None:
        self.stream = stream
        self.maxlen = maxlen
        self.client = connect(url)

    def send(self, frames: Sequence[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(self.stream, {FRAME_FIELD: frame}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
