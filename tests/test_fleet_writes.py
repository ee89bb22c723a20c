"""A batch's heartbeats are written as one update per worker: the same rows and gaps as
writing them one event at a time, in any order, with re-deliveries."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stemtrace.store.ingest import Ingestor
from stemtrace.store.schema import Store
from tests.factories import W1, W2, worker_event

T = 1_700_000_000.0


def beat(worker: str, offset: float, processed: int, freq: float | None) -> Any:
    fields: dict[str, Any] = {"active": processed % 3, "processed": processed, "dropped": 0,
                              "loadavg": [offset % 2, 0.5, 0.25]}  # fmt: skip
    if freq is not None:
        fields["freq"] = freq
    return worker_event("worker_heartbeat", worker, T + offset, **fields)


def state(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    workers = conn.execute("SELECT * FROM workers ORDER BY hostname").fetchall()
    gaps = conn.execute("SELECT * FROM worker_gaps ORDER BY hostname, start").fetchall()
    return workers, gaps


events_strategy = st.lists(
    st.tuples(
        st.sampled_from([W1, W2]),
        st.floats(min_value=0, max_value=600, allow_nan=False).map(lambda x: round(x, 1)),
        st.integers(min_value=0, max_value=50),
        st.sampled_from([None, 2.0, 10.0]),
        st.sampled_from(["worker_heartbeat"] * 6 + ["worker_online", "worker_offline"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(found=events_strategy, cut=st.integers(min_value=1, max_value=30))
def test_heartbeats_in_one_batch_equal_one_by_one(
    tmp_path_factory: Any, found: list[Any], cut: int
) -> None:
    events = []
    for worker, offset, processed, freq, kind in found:
        if kind == "worker_heartbeat":
            events.append(beat(worker, offset, processed, freq))
        elif kind == "worker_online":
            about = {"sw_ver": "5.7.0", "pool": "solo", "concurrency": 1, "queues": ["celery"]}
            events.append(worker_event(kind, worker, T + offset, freq=freq or 2.0, **about))
        else:
            events.append(worker_event(kind, worker, T + offset))
    path: Path = tmp_path_factory.mktemp("fleet")
    one, many = Store(path / "one.db"), Store(path / "many.db")
    try:
        for event in events:
            Ingestor(one.writer()).ingest([event])
        ingestor = Ingestor(many.writer())
        for start in range(0, len(events), cut):
            ingestor.ingest(events[start : start + cut])
        assert state(many.writer()) == state(one.writer())
    finally:
        one.close()
        many.close()
