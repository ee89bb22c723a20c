"""Tasks in flight for the store benchmark: what the problems, queues and worker pages read.

:func:`top_up` adds, once per database, 10,000 tasks not finished yet through
the real ingest path: sent and not received (on 20 queues, one of them
consumed by no worker), received and held (some with an ETA still ahead or
passed), started (some long past their name's usual run time), and retries
waiting for their next attempt, on 50 workers. :func:`refresh` then, before
each run, sends those workers a heartbeat and records a broker count for
each queue, as a live consumer would have, so the workers are online and
the queues page has the broker's numbers (on SQLite or PostgreSQL: the
PostgreSQL copy of :mod:`bench.pg_copy` has the tasks in flight already).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.workload import NAMES
from stemtrace.core.events import Event, validate_event
from stemtrace.store import Store, open_store
from stemtrace.store.ingest import Ingestor

WORKERS = [f"inflight-w{n:02d}@bench" for n in range(50)]
QUEUES = [f"bench-q{n:02d}" for n in range(20)]
ORPHAN_QUEUE = QUEUES[-1]
"""A queue no worker consumes: a problem on the page."""
MIX = {"sent": 4_000, "received": 2_000, "started": 3_500, "retry": 500}
"""How many tasks of each kind :func:`top_up` adds (10,000 in all)."""


def _event(kind: str, ts: float, host: str, **fields: Any) -> Event:
    found: Event = {"kind": kind, "eid": uuid.uuid4().hex, "ts": ts, "host": host, "pid": 4242,
                    **fields}  # fmt: skip
    problem = validate_event(found)
    if problem is not None:
        raise ValueError(f"bench built an invalid event: {problem}")
    return found


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _consumed(worker: int) -> list[str]:
    """Each worker consumes four of the queues; none consumes the last one."""
    return [QUEUES[(worker + n) % (len(QUEUES) - 1)] for n in range(4)]


def top_up(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add the tasks in flight once (noted in ``meta``); return ``meta``."""
    if meta.get("inflight"):
        return meta
    rng = random.Random(17)
    now = time.time()
    events: list[Event] = []
    for n, worker in enumerate(WORKERS):
        online = {"sw_ver": "5.7.0", "pool": "prefork", "concurrency": 8, "freq": 10.0}
        events.append(
            _event(
                "worker_online", now - 3600, worker, worker=worker, queues=_consumed(n), **online
            )
        )
    for kind, count in MIX.items():
        for _ in range(count):
            events.extend(_task(kind, rng, now))
    store = Store(path)
    try:
        ingestor = Ingestor(store.writer())
        for start in range(0, len(events), 5000):
            ingestor.ingest(events[start : start + 5000])
    finally:
        store.close()
    meta["inflight"] = {"tasks": sum(MIX.values()), "workers": len(WORKERS), "at": now}
    return meta


def _task(kind: str, rng: random.Random, now: float) -> list[Event]:
    task_id = str(uuid.UUID(int=rng.getrandbits(128)))
    name = rng.choice(NAMES)
    worker_index = rng.randrange(len(WORKERS))
    worker = WORKERS[worker_index]
    queue = ORPHAN_QUEUE if rng.random() < 0.02 else rng.choice(_consumed(worker_index))
    sent = now - rng.uniform(5, 900)
    retries = rng.randint(1, 6) if kind == "retry" else 0
    eta = None
    if kind == "retry" or (kind == "received" and rng.random() < 0.3):
        eta = _iso(now + rng.uniform(-120, 600))
    common = {"task_id": task_id, "name": name, "retries": retries}
    found = [_event("sent", sent, "web-1", **common, trace_id=task_id, parent_id=None,
                    root_id=task_id, group_id=None, group_index=None, chain=[], eta=eta,
                    expires=None, queue=queue, exchange="", routing_key=queue, args=[],
                    kwargs={})]  # fmt: skip
    if kind in ("received", "started"):
        found.append(_event("received", sent + 0.01, worker, **common, worker=worker, eta=eta,
                            instrumented=True))  # fmt: skip
    if kind == "started":
        found.append(_event("started", sent + rng.uniform(0.02, 2.0), worker, **common,
                            worker=worker))  # fmt: skip
    return found


def refresh(target: Path | str, now: float | None = None) -> None:
    """A heartbeat from every bench worker and a broker count for every queue, ``now``,
    through the writer of the store at ``target`` (a SQLite path or a PostgreSQL URL):
    the same numbers for the same ``now`` on either backend."""
    now = time.time() if now is None else now
    rng = random.Random(int(now))
    beats = [_event("worker_heartbeat", now, w, worker=w, active=8, processed=100, freq=10.0,
                    dropped=0, loadavg=[1.0, 1.0, 1.0]) for w in WORKERS]  # fmt: skip
    store = open_store(str(target))
    try:
        writer = store.open_writer()
        writer.ingest(beats)
        writer.record_depths({queue: (rng.randrange(0, 500), None, None) for queue in QUEUES}, now)
    finally:
        store.close()
