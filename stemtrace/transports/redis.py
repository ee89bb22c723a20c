"""Redis Streams transport: each frame is one stream entry ``{"d": frame}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
        if len(frames) == 1:  # the publisher's usual call: a pipeline only adds to it
            self.client.xadd(self.stream, {FRAME_FIELD: frames[0]}, maxlen=self.maxlen,
                             approximate=True)  # fmt: skip
            return
        pipe = self.client.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(self.stream, {FRAME_FIELD: frame}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


class RedisStreamReader:
    """Reads frames with ``XREAD``; positions are stream entry ids (``ms-seq``)."""

    def __init__(self, url: str, *, stream: str) -> None:
        self.stream = stream
        self.client = connect(url, timeout=30.0)

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        reply: Any = self.client.xread(
            {self.stream: after or "0-0"}, count=count, block=max(int(block * 1000), 1)
        )
        found: list[tuple[str, bytes]] = []
        for _key, entries in reply or ():
            for entry_id, fields in entries:
                position = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                found.append((position, fields.get(FRAME_FIELD, b"")))
        return found

    def newest(self) -> str | None:
        """The id of the stream's last entry (read after it for new entries only)."""
        reply: Any = self.client.xrevrange(self.stream, count=1)
        if not reply:
            return None
        entry_id = reply[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def commit(self, position: str) -> None:
        """Nothing to do: the position is kept in the store, with the events."""

    def lag(self, after: str | None) -> float | None:
        try:
            info: Any = self.client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such stream yet
            return 0.0
        last = info.get("last-generated-id") or info.get(b"last-generated-id")
        if isinstance(last, bytes):
            last = last.decode()
        if not last:
            return 0.0
        newest = int(str(last).split("-")[0])
        seen = int(after.split("-")[0]) if after else 0
        return max(newest - seen, 0) / 1000.0 if seen else None

    def close(self) -> None:
        self.client.close()
