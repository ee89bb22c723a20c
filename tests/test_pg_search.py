"""PostgreSQL's ``q`` (:mod:`stemtrace.store.pg.search`): SQLite's answers on the same
tasks, found through the trigram index of the settled tasks; the extension refused."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from stemtrace.core.events import Event
from stemtrace.store import BadTarget, Store, TaskFilters, open_store
from stemtrace.store.pg import PgStore, reads
from stemtrace.store.pg import search as pg_search
from stemtrace.store.pg.days import days_of
from tests.factories import WEB, WEB_PID, task_event
from tests.pg import PG_ADMIN
from tests.test_search import NOW, index_all

FRAGMENTS = ["café", "CAFÉ", "cafe\u0301", "Straße", "STRASSE", "273\u212a", "İstanbul",
             "\u0131l\u0131k", "ΣΊΣΥΦΟΣ", "σίσυφος", "50%_off", "x_y", "xzy", "C:\\temp",
             'say "hi"', "'; DROP TABLE tasks; --", "<b>", "🎉", "ǅemal", "ǆEMAL", "Timeout",
             "TIMEOUT", "ord-0042", "\u200b", "ﬃ", "ffi", "k", "K"]  # fmt: skip
ALPHABET = "aefiklmorstxyAEFIKLMORSTXYéÉß\u0131İ\u212aΣ\u03c3ςΊί%_\\\"' -0🎉ǅǆﬃ\u0301"


def sent(task_id: str, ts: float, name: str, args: list[Any], note: str) -> Event:
    return task_event("sent", task_id, ts, host=WEB, pid=WEB_PID, name=name, args=args,
                      kwargs={"note": note}, retries=0)  # fmt: skip


def tasks(count: int, seed: int = 3) -> list[Event]:
    """``count`` tasks with fragments in every searched field; a third still in flight."""
    rng = random.Random(seed)
    found = []
    for n in range(count):
        task_id = f"{n:03d}-{rng.choice(FRAGMENTS)}-{uuid.UUID(int=rng.getrandbits(128))}"
        ts = 5000.0 + n // 2  # ties on seen_at: the id decides the order
        words = rng.sample(FRAGMENTS, 3)
        found.append(sent(task_id, ts, f"proj.{words[0]}", [words[1], n], words[2]))
        if n % 3 == 1:
            found.append(task_event("failed", task_id, ts + 1, retries=0,
                                    exc_type=f"{rng.choice(FRAGMENTS)}Error",
                                    exc_message=rng.choice(FRAGMENTS)))  # fmt: skip
        elif n % 3 == 2:
            found.append(task_event("succeeded", task_id, ts + 1, retries=0))
    return found


@pytest.fixture
def both(tmp_path: Path, pg: PgStore) -> Iterator[tuple[Store, PgStore]]:
    """The same 240 tasks in SQLite (all in its text index) and in PostgreSQL."""
    lite = Store(tmp_path / "lite.db")
    events = tasks(240)
    for start in range(0, len(events), 50):
        lite.open_writer().ingest(events[start : start + 50])
        pg.open_writer().ingest(events[start : start + 50])
    index_all(lite, now=time.time() + 3600)
    yield lite, pg
    lite.close()


def pages(store: Store | PgStore, filters: TaskFilters, limit: int, most: int = 4) -> list[Any]:
    """The first ``most`` pages with their cursors."""
    found = []
    cursor = None
    for _ in range(most):
        rows, cursor = store.list_tasks(filters, cursor, limit)
        found.append(([row["id"] for row in rows], cursor))
        if cursor is None:
            break
    return found


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=ALPHABET, min_size=1, max_size=6),
                st.sampled_from(FRAGMENTS).map(lambda w: w[1:-1] or w).filter(bool)),
    limit=st.integers(min_value=1, max_value=30),
    states=st.sampled_from([(), ("FAILURE",), ("PENDING",), ("PENDING", "SUCCESS")]),
)  # fmt: skip
def test_postgresql_finds_what_sqlite_finds(
    both: tuple[Store, PgStore], q: str, limit: int, states: tuple[str, ...]
) -> None:
    lite, pg = both
    filters = TaskFilters(q=q, states=states)
    assert pages(pg, filters, limit) == pages(lite, filters, limit)


def test_every_fragment_finds_the_same_tasks_in_both(both: tuple[Store, PgStore]) -> None:
    lite, pg = both
    found_any = 0
    for fragment in [*FRAGMENTS, *(f.lower() for f in FRAGMENTS), *(f.upper() for f in FRAGMENTS)]:
        expected = pages(lite, TaskFilters(q=fragment), 500, most=1)
        assert pages(pg, TaskFilters(q=fragment), 500, most=1) == expected, fragment
        found_any += bool(expected[0][0])
        ranked = TaskFilters(q=fragment, sort="runtime", since=0.0)  # (cursors hold the time)
        assert pg.list_tasks(ranked, None, 500)[0] == lite.list_tasks(ranked, None, 500)[0]
    assert found_any > len(FRAGMENTS)  # the comparison is not one of empty lists


def plan(conn: psycopg.Connection[Any], filters: TaskFilters) -> list[str]:
    """The indexes the page's statement reads, PostgreSQL kept from scanning the table or
    an index in order (a few hundred rows are read whole sooner than through an index)."""
    query, params = reads._searched(filters, None, 50)
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_indexscan = off")
        found = conn.execute("EXPLAIN (FORMAT JSON) " + reads._pg(query), params).fetchone()
    assert found is not None
    names: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            names.append(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(found[0][0]["Plan"])
    return names


def text_indexes(conn: psycopg.Connection[Any]) -> set[str]:
    """``tasks_text`` and, if ``tasks`` is partitioned, its partitions' indexes."""
    rows = conn.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) UNION SELECT %s",
        (pg_search.INDEX, pg_search.INDEX),
    ).fetchall()
    return {str(row[0]) for row in rows}


def test_a_rare_text_is_found_through_the_trigram_index(both: tuple[Store, PgStore]) -> None:
    lite, pg = both
    rare = TaskFilters(q="ord-0042")
    with pg.connection() as conn:
        mine = text_indexes(conn)
        read = plan(conn, rare)
        assert set(read) & mine, read  # the settled half: the trigram index
    expected = pages(lite, rare, 5)
    assert expected[0][0] and pages(pg, rare, 5) == expected


def test_the_answer_is_the_same_whichever_way_the_planner_goes(pg: PgStore) -> None:
    events = tasks(120, seed=5)
    pg.open_writer().ingest(events)
    queries = ["CAFÉ", "café", "ss", "50%_", "x_y", "\\t", "ΣΊΣ", "ord", "ǅem", "'; drop", "ﬃ"]

    def answers(*settings: str) -> list[Any]:
        with pg.connection() as conn, conn.transaction():
            for setting in settings:
                conn.execute(f"SET LOCAL {setting} = off")
            found = []
            for q in queries:
                query, params = reads._searched(TaskFilters(q=q), None, 500)
                rows = conn.execute(reads._pg(query), params).fetchall()
                found.append([row[0] for row in rows])
            return found

    scanned = answers("enable_bitmapscan", "enable_indexscan")
    assert answers("enable_seqscan", "enable_indexscan") == scanned  # the trigram index
    assert answers() == scanned and sum(map(len, scanned)) > 20


def test_the_planner_knows_a_common_text_from_a_rare_one(pg: PgStore) -> None:
    """Statistics of the index's expressions (ignored for a partial index's own): without
    them the planner would guess from the pattern's length, and read a common text through
    the index and a rare one by reading every task (see ``search.STATISTICS``)."""
    names = ("add", "mul", "div")
    pg.open_writer().ingest([
        task_event(kind, f"t-{n:03d}", NOW + n, retries=0, name=f"proj.tasks.{names[n % 3]}")
        for n in range(600) for kind in ("started", "succeeded")
    ])  # fmt: skip
    with pg.connection() as conn:
        conn.execute("ANALYZE tasks")

        def estimate(q: str) -> int:
            where = f"{pg_search.SETTLED} AND {pg_search.MATCH}"
            params = [pg_search.pattern(q)] * pg_search.BOUND
            found = conn.execute(
                "EXPLAIN (FORMAT JSON) " + reads._pg(f"SELECT 1 FROM tasks WHERE {where}"),
                params,
            ).fetchone()
            assert found is not None
            return int(found[0][0]["Plan"]["Plan Rows"])

        assert 100 <= estimate("PROJ.TASKS.ADD") <= 400  # 200
        assert estimate("zzqqxx") <= 6
        tables = ["tasks", *(name for _, name in days_of(conn, "tasks"))]  # and each day's
        for column in pg_search.TEXT_COLUMNS:
            for table in tables:
                conn.execute(f"DROP STATISTICS {table}_text_{column}")
        conn.execute("ANALYZE tasks")
        assert estimate("PROJ.TASKS.ADD") < 20  # a guess from its length


def test_a_nul_in_q_finds_the_text_stored_with_one(pg: PgStore) -> None:
    """PostgreSQL's text holds no NUL: it stores U+FFFD, and ``q`` reads it so too."""
    pg.open_writer().ingest([
        task_event("failed", "t-nul", NOW, retries=0, exc_type="E", exc_message="bad\x00byte"),
        task_event("failed", "t-none", NOW, retries=0, exc_type="E", exc_message="bad byte"),
    ])  # fmt: skip
    assert [row["id"] for row in pg.list_tasks(TaskFilters(q="d\x00b"), None, 5)[0]] == ["t-nul"]
    assert pg.list_tasks(TaskFilters(q="\x00"), None, 5)[0][0]["id"] == "t-nul"


def test_search_status_says_what_the_index_leaves_to_scan(pg: PgStore) -> None:
    writer = pg.open_writer()
    writer.ingest(tasks(30))
    status = writer.search_status
    assert status is not None
    assert status["index"].startswith("tasks_text (pg_trgm ") and status["size_bytes"] > 0
    assert status["not_indexed"] == 10  # the tasks in flight: sent, not finished
    writer.ingest([task_event("succeeded", e["task_id"], NOW, retries=0)
                   for e in tasks(30) if e["kind"] == "sent"])  # fmt: skip
    assert writer.search_status == status  # read once a minute
    with pg.connection() as conn:
        now = pg_search._status(conn, 5)
        assert (now["index"], now["not_indexed"]) == (status["index"], 0)
        conn.execute(f"DROP INDEX {pg_search.INDEX}")
        assert pg_search._status(conn, 5) == {"index": None, "size_bytes": None, "not_indexed": 0}


@pytest.fixture
def plain_role(pg_url: str) -> Iterator[str]:
    """A role that may make tables in this test's database, not add extensions to it."""
    role = f"stemtrace_role_{uuid.uuid4().hex[:12]}"
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        yield f"postgresql://{role}@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_database_without_pg_trgm_is_refused_with_what_to_run(
    plain_role: str, pg_url: str
) -> None:
    name = pg_url.rsplit("/", 1)[1]
    with pytest.raises(pg_search.TrigramsUnavailable) as refused:
        PgStore(plain_role)
    message = str(refused.value)
    assert "CREATE EXTENSION pg_trgm;" in message and repr(name) in message
    assert "permission denied" in message
    with pytest.raises(BadTarget, match="CREATE EXTENSION pg_trgm"):
        open_store(plain_role)
    with psycopg.connect(pg_url) as conn:  # nothing half made
        assert conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,)
        conn.execute("CREATE EXTENSION pg_trgm")  # what the administrator runs
    store = PgStore(plain_role)
    try:
        assert "m004_text_index" in store.applied
        store.open_writer().ingest(tasks(9))
        assert pages(store, TaskFilters(q="proj"), 5)[0][0]
    finally:
        store.close()
