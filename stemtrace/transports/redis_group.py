"""Redis Streams read by a consumer group: several consumers split one stream.

Each reader is one named consumer of the group (``XREADGROUP``). An entry
stays pending in the group until :meth:`RedisGroupReader.commit` acknowledges
it (``XACK``), which the consumer calls only once the entry's batch is
committed to the store. The group, not the store, keeps the position: ``after``
is ignored. A reader first takes back its own pending entries (a restart
under the same name, or a batch the store refused), then the entries other
consumers left pending longer than ``claim_idle`` (``XAUTOCLAIM``: their
consumer died), then new ones. Delivery is at-least-once; the store's
idempotent ingest makes a second delivery change nothing.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from stemtrace.transports.redis import FRAME_FIELD, connect

STATUS_EVERY = 1.0
"""Seconds between two reads of the group's pending count and lag (``XINFO``)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisGroupReader:
    """One consumer of a group on a stream; positions are entry ids, acked on commit."""

    def __init__(
        self, url: str, *, stream: str, group: str, consumer: str, claim_idle: float
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.client = connect(url, timeout=30.0)
        self.claimed = 0
        self._created = False
        self._own_pending = True  # our entries left unacked by a previous run come first
        self._claim_from = "0-0"
        self._next_claim = 0.0
        self._delivered: list[str] = []
        self._status: dict[str, Any] = {}
        self._lag: float | None = None
        self._next_status = 0.0

    def _ensure_group(self) -> None:
        """Create the group (and the stream) when missing, from the stream's start: a new
        group has read nothing, so what the stream still holds is what it has to store."""
        if self._created:
            return
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._created = True

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        self._ensure_group()
        found: list[tuple[str, bytes]] = []
        if self._own_pending:
            found = self._group_read("0", count, None)
            self._own_pending = bool(found)
        if not found and time.monotonic() >= self._next_claim:
            found = self._claim(count)
        if not found:
            found = self._group_read(">", count, max(int(block * 1000), 1))
        self._delivered.extend(position for position, _frame in found)
        return found

    def _group_read(self, start: str, count: int, block: int | None) -> list[tuple[str, bytes]]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block
        )
        found: list[tuple[str, bytes]] = []
        gone: list[str] = []
        for _key, entries in reply or ():
            for entry_id, fields in entries:
                if not fields:  # trimmed from the stream while pending: nothing to store
                    gone.append(_text(entry_id))
                    continue
                found.append((_text(entry_id), fields.get(FRAME_FIELD, b"")))
        if gone:
            self.client.xack(self.stream, self.group, *gone)
            if start == "0" and not found:
                return self._group_read(start, count, block)
        return found

    def _claim(self, count: int) -> list[tuple[str, bytes]]:
        """Take over entries another consumer has held longer than ``claim_idle``; one
        slice per call, a new sweep from the start every half ``claim_idle``."""
        reply: Any = self.client.xautoclaim(
            self.stream, self.group, self.consumer, int(self.claim_idle * 1000),
            start_id=self._claim_from, count=count,
        )  # fmt: skip
        self._claim_from = _text(reply[0])
        if self._claim_from == "0-0":
            self._next_claim = time.monotonic() + self.claim_idle / 2
        found = [
            (_text(entry_id), fields.get(FRAME_FIELD, b""))
            for entry_id, fields in reply[1]
            if fields
        ]
        self.claimed += len(found)
        return found

    def commit(self, position: str) -> None:
        """Acknowledge the entries delivered up to ``position``: their batch is stored."""
        try:
            upto = self._delivered.index(position) + 1
        except ValueError:
            upto = len(self._delivered)
        done, self._delivered = self._delivered[:upto], self._delivered[upto:]
        if done:
            self.client.xack(self.stream, self.group, *done)

    def lag(self, after: str | None) -> float | None:
        """Seconds between the stream's newest entry and the last one the group handed out."""
        self._refresh()
        return self._lag

    def group_status(self) -> dict[str, Any]:
        """The group, this consumer, and the group's pending count, for ``/api/health``."""
        self._refresh()
        return {
            "name": self.group,
            "consumer": self.consumer,
            "claim_idle_seconds": self.claim_idle,
            "claimed": self.claimed,
            **self._status,
        }

    def _refresh(self) -> None:
        if time.monotonic() < self._next_status:
            return
        self._next_status = time.monotonic() + STATUS_EVERY
        try:
            groups: Any = self.client.xinfo_groups(self.stream)
            stream: Any = self.client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no stream or group yet
            return
        mine = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if mine is None:
            return
        self._status = {"pending": mine.get("pending"), "consumers": mine.get("consumers")}
        newest = _text(stream.get("last-generated-id") or "0-0").split("-")[0]
        handed = _text(mine.get("last-delivered-id") or "0-0").split("-")[0]
        self._lag = max(int(newest) - int(handed), 0) / 1000.0 if int(handed) else None

    def close(self) -> None:
        """Unacknowledged entries stay pending: claimed by another consumer after
        ``claim_idle``, or taken back by this name when it reads again."""
        self.client.close()
