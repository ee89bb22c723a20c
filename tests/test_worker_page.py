"""One worker's page and ``GET /api/workers/{hostname}``: its heartbeat gaps (written at
ingest, untouched by late or re-delivered events), what it runs, holds and has
scheduled, its failures; the page and the API agree, hostile text stays text."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from stemtrace.core.events import Event
from stemtrace.store import Backend, Upkeep
from stemtrace.store.schema import Store
from tests.factories import W1, W2, Task, lifecycle, worker_event

NOW = time.time()
FREQ = 2.0


def beat(ts: float, worker: str = W1) -> Event:
    return worker_event("worker_heartbeat", worker, ts, freq=FREQ, active=0, dropped=0)


def online(ts: float, worker: str = W1, **fields: Any) -> Event:
    defaults = {"freq": FREQ, "tasks": [], "pool": "prefork", "concurrency": 4,
                "sw_ver": "5.7.0", "queues": ["celery", "mail"]}  # fmt: skip
    return worker_event("worker_online", worker, ts, **{**defaults, **fields})


def offline(ts: float, worker: str = W1) -> Event:
    return worker_event("worker_offline", worker, ts, dropped=0)


def gaps(store: Backend, worker: str = W1) -> list[tuple[float, float]]:
    found = store.worker(worker, since=0.0, now=NOW + 86400)
    assert found is not None
    return [(g["start"], g["end"]) for g in found["gaps"]]


def ingest(store: Backend, *batches: list[Event]) -> None:
    writer = store.open_writer()
    for batch in batches:
        writer.ingest(batch)


T = NOW - 3600
STEADY = [online(T), *(beat(T + n * FREQ) for n in range(1, 11))]  # up to T + 20


def test_a_silence_longer_than_its_heartbeats_allow_is_a_gap(backend: Backend) -> None:
    after = [beat(T + 100), beat(T + 102), beat(T + 104.9)]  # 2.9 s: within 2.5 beats
    ingest(backend, STEADY, after)
    assert gaps(backend) == [(T + 20, T + 100)]


def test_gaps_do_not_change_when_the_stream_is_read_again_or_shuffled(backend: Backend) -> None:
    stream = [*STEADY, beat(T + 100), beat(T + 102), offline(T + 110), online(T + 111)]
    stream += [beat(T + 113), beat(T + 300)]
    ingest(backend, stream)
    # silent, away (a restart), silent again
    expected = [(T + 20, T + 100), (T + 102, T + 110), (T + 110, T + 111), (T + 113, T + 300)]
    assert gaps(backend) == expected
    ingest(backend, stream, stream[::-1], [e for e in stream if e["kind"] == "worker_heartbeat"])
    assert gaps(backend) == expected
    shuffled = list(stream)
    random.Random(7).shuffle(shuffled)
    ingest(backend, *([e] for e in shuffled))  # re-delivered one by one, in any order
    assert gaps(backend) == expected


def test_a_late_heartbeat_makes_no_gap_and_closes_the_one_it_falls_in(backend: Backend) -> None:
    # The batch with T + 100 is read before the heartbeats between: a gap, for now.
    ingest(backend, STEADY, [beat(T + 100)])
    assert gaps(backend) == [(T + 20, T + 100)]
    ingest(backend, [beat(T + n * FREQ) for n in range(11, 25)])  # up to T + 48
    assert gaps(backend) == [(T + 48, T + 100)]
    ingest(backend, [beat(T + n * FREQ) for n in range(25, 50)])  # the rest arrive
    assert gaps(backend) == []
    ingest(backend, [beat(T + 10)])  # a re-delivered old heartbeat: nothing
    assert gaps(backend) == []


def test_only_the_workers_own_events_end_a_silence(backend: Backend) -> None:
    # A solo pool busy on a long task sends no heartbeat, while its task's events come.
    task = Task("busy", "proj.slow")
    ingest(backend, STEADY, [task.started(T + 21, W1), beat(T + 62)],
           [task.ended("succeeded", T + 60, W1)])  # fmt: skip
    assert gaps(backend) == [(T + 20, T + 62)]


def test_an_unknown_heartbeat_period_allows_a_minute(backend: Backend) -> None:
    slow = [worker_event("worker_heartbeat", W2, T + t, active=0, dropped=0) for t in (0, 59, 130)]
    ingest(backend, slow)
    assert gaps(backend, W2) == [(T + 59, T + 130)]


def test_retention_forgets_old_gaps(db_path: Path) -> None:
    store = Store(db_path)
    try:
        old = [online(T - 86400), beat(T - 86300), beat(T - 86000)]
        new = [beat(T), beat(T + 300)]
        ingest(store, old, new, lifecycle("t-old", "proj.add", T - 86400),
               lifecycle("t-new", "proj.add", T))  # fmt: skip
        assert gaps(store) == [(T - 86400, T - 86300), (T - 86300, T - 86000), (T - 86000, T),
                               (T, T + 300)]  # fmt: skip
        writer = store.open_writer(upkeep=Upkeep(max_age=12 * 3600))
        writer.upkeep(caught_up=True)
        assert gaps(store) == [(T - 86000, T), (T, T + 300)]
    finally:
        store.close()
