"""A chart's settled steps are reused a while: the same points as read afresh, the last
hour always exact, an old step's late event shown once the kept points expire."""

from __future__ import annotations

import time
from pathlib import Path

from stemtrace.server import settled, stats
from stemtrace.store.ingest import Ingestor
from stemtrace.store.schema import Store
from tests.factories import lifecycle


def query(now: float) -> stats.Query:
    return stats.parse_query(since="24h", until=None, step=900, filters={}, now=now)


def fresh(store: Store, now: float) -> list[dict[str, object]]:
    q = query(now)
    return [stats.point(r) for r in store.stats(q.since, q.until, q.step, q.dim, q.key)]


def test_settled_points_equal_a_fresh_read_and_expire(db_path: Path) -> None:
    now = time.time()
    store = Store(db_path)
    try:
        ingest = Ingestor(store.writer()).ingest
        for n in range(40):  # a task every 30 min over the day, some failing
            ingest(lifecycle(f"t{n}", "p.job", now - 86000 + n * 1800,
                             "FAILURE" if n % 5 == 0 else "SUCCESS", runtime=0.5 + n))  # fmt: skip
        cache = settled.Settled()
        stats.SETTLED, kept = cache, stats.SETTLED
        try:
            first = stats.series(store, query(now), now)
            assert first == fresh(store, now)
            assert stats.series(store, query(now), now) == first  # from the kept points
            ingest(lifecycle("recent", "p.job", now - 600, runtime=2.0))
            ingest(lifecycle("late", "p.job", now - 20000, "FAILURE", runtime=3.0))
            again = stats.series(store, query(now), now)
            truth = fresh(store, now)
            recent = [i for i, p in enumerate(truth) if p["t"] >= now - settled.SETTLED]
            assert [again[i] for i in recent] == [truth[i] for i in recent]  # the last hour
            assert again != truth  # the late event's step: kept as it was, for now
            later = now + settled.KEEP + 1
            assert stats.series(store, query(later), later) == fresh(store, later)
        finally:
            stats.SETTLED = kept
    finally:
        store.close()


def test_settled_totals_equal_a_fresh_read(db_path: Path) -> None:
    now = time.time()
    store = Store(db_path)
    try:
        ingest = Ingestor(store.writer()).ingest
        for n in range(60):
            name = ("p.a", "p.b", "p.c")[n % 3]
            ingest(lifecycle(f"t{n}", name, now - 6 * 86400 + n * 8000,
                             "FAILURE" if n % 4 == 0 else "SUCCESS", runtime=0.1 * n))  # fmt: skip
        ingest(lifecycle("now", "p.a", now - 30, runtime=1.0))
        cache = settled.Settled()

        def read(since: float, until: float) -> dict[str, dict[str, object]]:
            return store.stats_by("name", since, until, metrics=("run",))

        for span in (7 * 86400, 86400, 3 * 3600):
            since = now - span
            expected = read(since, now)
            assert cache.totals(store, ("name", "run"), since, now, now, read) == expected
            assert cache.totals(store, ("name", "run"), since, now, now, read) == expected
    finally:
        store.close()
