"""The in-process transport behaves as a broker would, within one process's life."""

from __future__ import annotations

import uuid

from stemtrace.transports import open_reader, open_sender
from stemtrace.transports.memory import DEFAULT_MAXLEN, stream_for


def test_memory_positions_from_another_process_start_over() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    sender = open_sender("memory://t", stream=name, maxlen=50)
    sender.send([b"a", b"b", b"c"])
    reader = open_reader("memory://t", stream=name)
    first = reader.read(None, 2, 0.1)
    assert [frame for _, frame in first] == [b"a", b"b"]
    assert [frame for _, frame in reader.read(first[-1][0], 10, 0.1)] == [b"c"]
    # a cursor saved by an earlier process (another stream instance) reads from the start
    stale = "0123456789ab:00000000000000000002"
    assert [frame for _, frame in reader.read(stale, 10, 0.1)] == [b"a", b"b", b"c"]


def test_the_sender_sets_the_cap_even_when_the_reader_came_first() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    open_reader("memory://t", stream=name)
    assert stream_for("memory://t", name).entries.maxlen == DEFAULT_MAXLEN
    open_sender("memory://t", stream=name, maxlen=5).send([bytes([i]) for i in range(9)])
    assert [frame for _, frame in stream_for("memory://t", name).read_after(0, 100)] == [
        bytes([i]) for i in range(4, 9)
    ]
