"""In-process transport (``memory://name``) for the demo and for tests.

Streams live in a process-wide table keyed by name, since sender and reader
meet only through the URL, as they would on a real broker. A stream lives as
long as its process: positions name the stream instance they belong to, so a
cursor saved by an earlier process reads the new stream from its start. The
sender sets the size cap; a reader that comes first does not.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

_streams: dict[str, MemoryStream] = {}
_streams_lock = threading.Lock()


DEFAULT_MAXLEN = 10_000


class MemoryStream:
    """A bounded, append-only list of frames with increasing integer ids."""

    def __init__(self, maxlen: int | None) -> None:
        self.entries: deque[tuple[int, bytes]] = deque(maxlen=maxlen or DEFAULT_MAXLEN)
        self.capped = maxlen is not None
        self.last_id = 0
        self.changed = threading.Condition()
        self.token = uuid.uuid4().hex[:12]

    def cap(self, maxlen: int) -> None:
        with self.changed:
            if not self.capped:
                self.entries = deque(self.entries, maxlen=maxlen)
                self.capped = True

    def append(self, frames: Sequence[bytes]) -> None:
        with self.changed:
            for frame in frames:
                self.last_id += 1
                self.entries.append((self.last_id, frame))
            self.changed.notify_all()

    def read_after(self, entry_id: int, count: int) -> list[tuple[int, bytes]]:
        with self.changed:
            return [entry for entry in self.entries if entry[0] > entry_id][:count]


def stream_for(url: str, stream: str, maxlen: int | None = None) -> MemoryStream:
    key = f"{urlsplit(url).netloc or 'default'}/{stream}"
    with _streams_lock:
        found = _streams.get(key)
        if found is None:
            found = _streams[key] = MemoryStream(maxlen)
        elif maxlen is not None:
            found.cap(maxlen)
        return found


class MemorySender:
    def __init__(self, url: str, *, stream: str, maxlen: int) -> None:
        self.stream = stream_for(url, stream, maxlen)

    def send(self, frames: Sequence[bytes]) -> None:
        self.stream.append(frames)

    def close(self) -> None:
        pass


class MemoryReader:
    def __init__(self, url: str, *, stream: str) -> None:
        self.stream = stream_for(url, stream)

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        token, _, number = (after or "").partition(":")
        start = int(number) if token == self.stream.token and number.isdigit() else 0
        with self.stream.changed:
            if self.stream.last_id <= start:
                self.stream.changed.wait(block)
        found = self.stream.read_after(start, count)
        return [(f"{self.stream.token}:{i:020d}", frame) for i, frame in found]

    def commit(self, position: str) -> None:
        pass

    def lag(self, after: str | None) -> float | None:
        return None

    def close(self) -> None:
        pass
