"""The text index behind ``q``: the same answers as the ``LIKE`` scan, kept up by the indexer."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database
from starlette.testclient import TestClient

from stemtrace.core.events import Event, encode_frame
from stemtrace.ingest.consumer import Consumer
from stemtrace.server.api import create_api_router
from stemtrace.store import Backend, Store, queries, search, tally
from stemtrace.store.ingest import Ingestor
from stemtrace.store.migrations import migrations
from stemtrace.store.queries import TaskFilters
from stemtrace.store.retention import Retention
from stemtrace.store.search import SearchIndexer
from stemtrace.store.writer import SqliteWriter
from tests.factories import WEB, WEB_PID, task_event
from tests.site import site_of

NOW = 1_000_000.0
"""The indexer's clock in these tests; every task was written long before."""

WORDS = ["Timeout", "timeout", "ord-0042", "50%_off", "back\\slash", 'say "hi"', "café",
         "CAFÉ", "ǅemal", "naïve", "x_y%z", "abcabc", "ab", "TIMEOUTERROR", "a\x00b"]  # fmt: skip
ALPHABET = "abcotiTOemu%_\\\"'-0 4éÉ\x00"


def sent(task_id: str, ts: float, name: str, args: list[Any], note: str = "") -> Event:
    """A task sent from a web process, with ``note`` as its keyword argument."""
    return task_event("sent", task_id, ts, host=WEB, pid=WEB_PID, name=name, args=args,
                      kwargs={"note": note}, retries=0)  # fmt: skip


def ended(task_id: str, ts: float, kind: str = "succeeded", **fields: Any) -> Event:
    return task_event(kind, task_id, ts, retries=0, **fields)


def fill(store: Store, count: int, seed: int = 7) -> None:
    """``count`` tasks (a few with equal first-seen times), mostly finished."""
    import random

    rng = random.Random(seed)
    batch = []
    for n in range(count):
        task_id = f"{n:04d}-{uuid.UUID(int=rng.getrandbits(128))}"
        ts = 1000.0 + n // 3  # ties on seen_at: the id decides the order
        words = rng.sample(WORDS, 2)
        batch.append(sent(task_id, ts, f"proj.{words[0]}", [words[1], n], note=rng.choice(WORDS)))
        if n % 7 == 0:
            batch.append(ended(task_id, ts + 1, "failed", exc_type="TimeoutError",
                               exc_message=rng.choice(WORDS)))  # fmt: skip
        elif n % 11 != 0:  # the rest stay PENDING
            batch.append(ended(task_id, ts + 1))
    Ingestor(store.writer()).ingest(batch)


def index_all(store: Store, indexer: SearchIndexer | None = None, now: float = NOW) -> int:
    indexer = indexer or SearchIndexer(slice_size=50)
    total = 0
    while (done := indexer.step(store.writer(), now=now)) >= indexer.slice_size:
        total += done
    return total + done


def scanned(store: Store, filters: TaskFilters, cursor: str | None, limit: int) -> Any:
    """The answer of the plain ``LIKE`` scan, the index left out."""
    with mock.patch.object(search, "narrow", return_value=None):
        return queries.list_tasks(store.reader().conn, filters, cursor, limit)


def all_pages(store: Store, filters: TaskFilters, limit: int) -> list[list[str]]:
    """Every page, each checked against the scan's page from the same cursor."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        rows, next_cursor = queries.list_tasks(store.reader().conn, filters, cursor, limit)
        assert (rows, next_cursor) == scanned(store, filters, cursor, limit)
        pages.append([row["id"] for row in rows])
        if next_cursor is None:
            return pages
        cursor = next_cursor


@pytest.fixture(scope="module", autouse=True)
def small_spans() -> Iterator[None]:
    """Spans of 16 rowids, so that a few hundred tasks make many."""
    with mock.patch.object(search, "SPAN_BITS", 4):
        yield


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    found = Store(tmp_path / "store.db")
    yield found
    found.close()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """300 tasks: the first 200 indexed or pending, the last 100 past the position."""
    found = Store(tmp_path_factory.mktemp("mixed") / "mixed.db")
    fill(found, 200)
    index_all(found)
    fill(found, 100, seed=8)  # ids start again at 0000: other random parts
    yield found
    found.close()


def test_the_mixed_store_is_partly_indexed(mixed: Store) -> None:
    conn = mixed.reader().conn
    position = conn.execute("SELECT position FROM task_search_state").fetchone()[0]
    documents = conn.execute("SELECT COUNT(*) FROM task_search").fetchone()[0]
    pending = conn.execute("SELECT COUNT(*) FROM task_search_pending").fetchone()[0]
    assert position == 200 and documents == 200 and pending > 0  # PENDING tasks, aged
    narrowed = search.narrow(conn, "ord-0042")
    assert narrowed is not None and narrowed.position == 200
    assert 0 < sum(len(rowids) for _, rowids in narrowed.spans) < 200
    spans = conn.execute("SELECT span, max_seen FROM task_search_spans").fetchall()
    assert len(spans) == 13  # rowids 1 to 200 in spans of 16
    with mock.patch.object(search, "MOST_CANDIDATES", 2):
        walked = search.narrow(conn, "ord-0042")
    assert walked is not None and len(walked.spans) > 2
    bounds = [bound for bound, _ in walked.spans]
    assert bounds == sorted(bounds, reverse=True) and set(bounds) <= {b for _, b in spans}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=st.one_of(st.sampled_from(WORDS), st.text(alphabet=ALPHABET, min_size=1, max_size=8),
                st.sampled_from(WORDS).map(lambda w: w[1:-1])),
    limit=st.integers(min_value=1, max_value=40),
    state=st.sampled_from([(), ("FAILURE",), ("PENDING", "SUCCESS")]),
    sizes=st.sampled_from([(1000, 10_000, 20), (2, 10_000, 0), (2, 40, 0), (2, 10_000, 20)]),
)  # fmt: skip
def test_q_answers_exactly_what_the_like_scan_does(
    mixed: Store, q: str, limit: int, state: tuple[str, ...], sizes: tuple[int, int, int]
) -> None:
    """All at once, walked span by span, or walked too long and scanned after all."""
    filters = TaskFilters(q=q, states=state)
    cursor = None
    with (
        mock.patch.object(search, "MOST_CANDIDATES", sizes[0]),
        mock.patch.object(search, "MOST_WALKED", sizes[1]),
        mock.patch.object(search, "FIRST_ROUND", 5),
        mock.patch.object(search, "DENSE", sizes[2]),
    ):
        for _ in range(3):  # the first pages, each from the previous cursor
            rows, next_cursor = queries.list_tasks(mixed.reader().conn, filters, cursor, limit)
            expected, expected_cursor = scanned(mixed, filters, cursor, limit)
            assert rows == expected and next_cursor == expected_cursor
            if next_cursor is None:
                break
            cursor = next_cursor


def test_pages_cross_the_indexed_position(store: Store) -> None:
    fill(store, 90)
    index_all(store, SearchIndexer(slice_size=45), now=NOW)  # all 90: two full slices
    store.writer().execute("UPDATE task_search_state SET position = 60")
    store.writer().execute("DELETE FROM task_search WHERE rowid > 60")
    pages = all_pages(store, TaskFilters(q="TIMEOUT"), limit=4)
    found = [task_id for page in pages for task_id in page]
    assert len(found) == len(set(found)) > 8
    rowids = dict(store.reader().conn.execute("SELECT id, rowid FROM tasks").fetchall())
    assert {rowids[i] > 60 for i in found} == {True, False}


def test_a_common_text_scans_and_a_rare_one_narrows(store: Store) -> None:
    fill(store, 60)
    index_all(store)
    conn = store.reader().conn
    with (
        mock.patch.object(search, "MOST_CANDIDATES", 5),
        mock.patch.object(search, "DENSE", 0),
        mock.patch.object(search, "MOST_MATCHES", 20),
    ):
        assert search.narrow(conn, "proj") is None  # too many to walk
        assert search.narrow(conn, "0042-") is not None
    with mock.patch.object(search, "MOST_CANDIDATES", 5):
        assert search.narrow(conn, "proj") is None  # in all the newest tasks: scanned
        with mock.patch.object(search, "DENSE", 0):
            walked = search.narrow(conn, "proj")  # walked, newest span first
    assert walked is not None and [len(r) for _, r in walked.spans] == [13, 16, 16, 15]
    with mock.patch.object(search, "FIRST_ROUND", 1):
        rounds = list(walked.rounds(1))
    assert [len(json.loads(c)) for c, _ in rounds] == [13, 16, 16, 15] and rounds[-1][1] is None
    with mock.patch.object(search, "MOST_WALKED", 20), mock.patch.object(search, "FIRST_ROUND", 1):
        assert [len(json.loads(c)) for c, _ in walked.rounds(1)] == [13]  # then a scan
    assert search.narrow(conn, "ab") is None  # shorter than a trigram
    assert search.narrow(conn, "a\x00b") is None  # a NUL cuts a LIKE pattern short
    with mock.patch.object(search, "MOST_UNINDEXED", 5):
        fill(store, 10, seed=9)  # ten tasks past the position
        assert search.narrow(conn, "0042-") is None


def test_a_task_is_indexed_once_settled_with_its_final_text(store: Store) -> None:
    ingestor = Ingestor(store.writer())
    ingestor.ingest([sent("t-run", NOW - 20, "proj.long", [1])])
    indexer = SearchIndexer(settle=10, max_wait=300, recheck=5)
    conn = store.reader().conn

    def documents() -> int:
        return int(conn.execute("SELECT COUNT(*) FROM task_search").fetchone()[0])

    def found(q: str) -> list[str]:
        return [row["id"] for row in queries.list_tasks(conn, TaskFilters(q=q), None, 10)[0]]

    assert indexer.step(store.writer(), now=NOW) == 1
    assert documents() == 0 and indexer.status["pending"] == 1
    assert found("proj.long") == ["t-run"]  # pending: checked without the index
    ingestor.ingest([ended("t-run", NOW - 1, "failed", exc_type="DiskFullError",
                           exc_message="no space left")])  # fmt: skip
    indexer.step(store.writer(), now=NOW + 6)  # failed, but written too recently
    assert documents() == 0 and found("space left") == ["t-run"]
    store.writer().execute("UPDATE tasks SET updated_at = ?", (NOW - 60,))
    assert indexer.step(store.writer(), now=NOW + 12) == 1
    assert documents() == 1 and indexer.status["pending"] == 0
    hits = conn.execute(
        'SELECT rowid FROM task_search WHERE task_search MATCH \'"spa" AND "ull"\''
    ).fetchall()
    assert len(hits) == 1
    assert found("space left") == ["t-run"] and found("DiskFull") == ["t-run"]


def test_a_long_task_is_indexed_by_age_then_again_when_it_ends(store: Store) -> None:
    ingestor = Ingestor(store.writer())
    ingestor.ingest([sent("t-long", NOW - 400, "proj.long", [1])])
    store.writer().execute("UPDATE tasks SET updated_at = ?", (NOW - 400,))
    indexer = SearchIndexer(settle=10, max_wait=300, recheck=0)
    indexer.step(store.writer(), now=NOW)
    conn = store.reader().conn
    assert conn.execute("SELECT indexed FROM task_search_pending").fetchall() == [(1,)]
    ingestor.ingest([ended("t-long", NOW - 30, "failed", exc_type="SoftTimeLimitExceeded")])
    store.writer().execute("UPDATE tasks SET updated_at = ?", (NOW - 30,))
    indexer.step(store.writer(), now=NOW)
    assert conn.execute("SELECT COUNT(*) FROM task_search_pending").fetchone()[0] == 0
    match = "SELECT COUNT(*) FROM task_search WHERE task_search MATCH '\"oft\"'"
    assert conn.execute(match).fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM task_search").fetchone()[0] == 1


def test_text_arriving_after_the_task_was_indexed_is_found_and_indexed_again(
    store: Store,
) -> None:
    ingestor = Ingestor(store.writer())
    ingestor.ingest([ended("t-late", NOW - 100, name="proj.late")])  # its sent event is late
    store.writer().execute("UPDATE tasks SET updated_at = ?", (NOW - 100,))
    indexer = SearchIndexer(settle=10, max_wait=300, recheck=0)
    indexer.step(store.writer(), now=NOW)
    conn = store.reader().conn
    assert conn.execute("SELECT COUNT(*) FROM task_search_pending").fetchone()[0] == 0

    def found(q: str) -> list[str]:
        return [row["id"] for row in queries.list_tasks(conn, TaskFilters(q=q), None, 10)[0]]

    ingestor.ingest([sent("t-late", NOW - 101, "proj.late", ["invoice-77812"])])
    assert conn.execute("SELECT * FROM task_search_pending").fetchall() == [(1, 1)]
    assert found("invoice-77812") == ["t-late"]  # pending again: checked directly
    ingestor.ingest([sent("t-new", NOW - 5, "proj.new", ["invoice-77812"])])  # not indexed yet
    assert conn.execute("SELECT COUNT(*) FROM task_search_pending").fetchone()[0] == 1
    store.writer().execute("UPDATE tasks SET updated_at = ? WHERE id = 't-late'", (NOW - 60,))
    indexer.step(store.writer(), now=NOW)
    assert conn.execute("SELECT task_rowid FROM task_search_pending").fetchall() == [(2,)]
    match = "SELECT rowid FROM task_search WHERE task_search MATCH '\"778\"'"
    assert conn.execute(match).fetchall() == [(1,)]
    assert found("invoice-77812") == ["t-new", "t-late"]


def test_retention_deletes_the_documents_of_the_tasks_it_prunes(store: Store) -> None:
    fill(store, 40)
    index_all(store)
    conn = store.writer()
    # the newest task is first seen earliest: pruning it frees the largest rowid
    conn.execute("UPDATE tasks SET seen_at = 1 WHERE rowid = 40")
    Retention(max_tasks=25, interval=0).step(conn, now=NOW)
    left = {r for (r,) in conn.execute("SELECT rowid FROM tasks")}
    documents = {r for (r,) in conn.execute("SELECT rowid FROM task_search")}
    pending = {r for (r,) in conn.execute("SELECT task_rowid FROM task_search_pending")}
    assert 0 < len(left) <= 25 and documents == left and pending <= left
    assert conn.execute("SELECT position FROM task_search_state").fetchone()[0] == max(left)
    Ingestor(conn).ingest([sent("t-new", 5000.0, "proj.reused", [1]), ended("t-new", 5001.0)])
    assert conn.execute("SELECT rowid FROM tasks WHERE id = 't-new'").fetchone()[0] == 40
    index_all(store)
    found = queries.list_tasks(store.reader().conn, TaskFilters(q="reused"), None, 5)[0]
    assert [row["id"] for row in found] == ["t-new"]
    assert search.narrow(store.reader().conn, "reused") is not None


def test_the_migration_indexes_a_store_that_already_has_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(Database(conn), stop_before="m006_task_search")
    # Today's ingestor on that schema: its history goes to a table that goes away.
    conn.execute("CREATE TEMP TABLE history (task_rowid INTEGER, events TEXT)")
    # The ingestor of then knew no index and no rollups.
    with mock.patch.object(search, "touched"), mock.patch.object(tally, "tally"):
        Ingestor(conn).ingest(
            [sent(f"old-{n}", 1000.0 + n, "proj.legacy", [n]) for n in range(30)]
            + [ended(f"old-{n}", 1001.0 + n) for n in range(30)]
        )
    conn.close()
    store = Store(path)
    try:
        reader = store.reader().conn
        assert reader.execute("SELECT position FROM task_search_state").fetchone()[0] == 0
        before = queries.list_tasks(reader, TaskFilters(q="old-2"), None, 50)
        assert search.narrow(reader, "legacy") == search.Narrowed(0, [(math.inf, [])])
        assert index_all(store) == 30
        assert reader.execute("SELECT COUNT(*) FROM task_search").fetchone()[0] == 30
        assert search.narrow(reader, "legacy") is not None
        rows, _ = queries.list_tasks(reader, TaskFilters(q="old-2"), None, 50)
        assert [row["id"] for row in rows] == ["old-29", "old-28", "old-27", "old-26",
                                               "old-25", "old-24", "old-23", "old-22",
                                               "old-21", "old-20", "old-2"]  # fmt: skip
        assert (rows, None) == before
    finally:
        store.close()


# -- the consumer --------------------------------------------------------------------


class ScriptedReader:
    """Hands out frames in reads of scripted sizes, then nothing."""

    def __init__(self, sizes: list[int], log: list[str]) -> None:
        self.sizes = list(sizes)
        self.log = log
        self.sent = 0
        self.start = time.time() - 600

    def read(self, after: str | None, count: int, block: float) -> list[tuple[str, bytes]]:
        size = self.sizes.pop(0) if self.sizes else 0
        self.log.append(f"read {size}")
        found = []
        for _ in range(size):
            self.sent += 1
            n = self.sent
            task_id = f"c-{n:03d}"
            frame = encode_frame(
                [
                    # real times: what goes through the decoder must be a time of today
                    sent(task_id, self.start + n, "proj.streamed", [n]),
                    ended(task_id, self.start + n + 0.5, name="proj.streamed"),
                ]
            )
            found.append((f"{n}-0", frame))
        return found

    def commit(self, position: str) -> None:
        pass

    def lag(self, after: str | None) -> float | None:
        return None

    def close(self) -> None:
        pass


class LoggingIndexer(SearchIndexer):
    def __init__(self, log: list[str], done: threading.Event) -> None:
        super().__init__(slice_size=4, settle=0)
        self.log = log
        self.done = done

    def step(self, conn: sqlite3.Connection, now: float | None = None) -> int:
        found = super().step(conn, now)
        self.log.append(f"index {found}")
        if found < self.slice_size:
            self.done.set()
        return found


def consume_until_indexed(store: Store, reads: list[int], log: list[str]) -> Consumer:
    """Run a consumer on scripted reads until its indexer has caught up."""
    done = threading.Event()
    reader = ScriptedReader(reads, log)

    class IndexLoggingConsumer(Consumer):
        def open_writer(self) -> SqliteWriter:
            writer = SqliteWriter(store.writer())
            writer.indexer = LoggingIndexer(log, done)
            return writer

    consumer = IndexLoggingConsumer(store, lambda: reader, source="scripted", batch_frames=5,
                                    block=0.01)  # fmt: skip
    consumer.start()
    try:
        assert done.wait(20)
    finally:
        consumer.stop()
    return consumer


def test_the_consumer_indexes_only_once_it_has_caught_up(store: Store) -> None:
    log: list[str] = []
    consumer = consume_until_indexed(store, [5, 5, 2], log)
    first = log.index("read 2")
    assert log[:first] == ["read 5", "read 5"]  # behind: no indexing
    assert log[first + 1 : first + 4] == ["index 4", "read 0", "index 4"]
    assert log[first + 4 : first + 6] == ["read 0", "index 4"]
    status = consumer.status.as_dict()["search"]
    assert status["position"] == 12 and status["not_indexed"] == 0
    assert status["indexed"] == 12 and status["pending"] == 0


def test_health_shows_the_indexer(store: Store) -> None:
    consumer = consume_until_indexed(store, [3], [])
    app = FastAPI()
    app.include_router(create_api_router(site_of(store, consumer.status.as_dict)))
    with TestClient(app) as client:
        health = client.get("/api/health").json()
    assert health["consumer"]["search"] == {
        "position": 3,
        "indexed": 3,
        "not_indexed": 0,
        "pending": 0,
    }


def test_a_walk_stops_once_the_page_is_final_and_stays_exact(store: Store) -> None:
    fill(store, 160)
    index_all(store)
    conn = store.reader().conn
    newest = queries.list_tasks(conn, TaskFilters(), None, 1)[0][0]["id"]
    # the newest task turns out to have been sent before all others: it moves to the end
    Ingestor(store.writer()).ingest([sent(newest, 10.0, "proj.early", [0])])
    filters = TaskFilters(q="proj.")
    statements: list[str] = []
    with (
        mock.patch.object(search, "MOST_CANDIDATES", 2),
        mock.patch.object(search, "FIRST_ROUND", 1),
        mock.patch.object(search, "DENSE", 0),
    ):
        conn.set_trace_callback(statements.append)
        try:
            first = queries.list_tasks(conn, filters, None, 7)
        finally:
            conn.set_trace_callback(None)
        assert first == scanned(store, filters, None, 7)
        pages = all_pages(store, filters, limit=7)
    walks = [sql for sql in statements if sql.startswith("WITH found")]
    scans = [sql for sql in statements if sql.startswith("SELECT id, name")]
    assert len(walks) == 1 and not scans  # the newest span's 16 candidates fill the page
    assert sum(len(page) for page in pages) == 160 and pages[-1][-1] == newest


def test_two_indexers_on_one_store_take_turns(store: Store) -> None:
    fill(store, 50)
    one, two = SearchIndexer(slice_size=7), SearchIndexer(slice_size=7)
    other = store.new_writer()
    while one.step(store.writer(), now=NOW) + two.step(other, now=NOW):
        pass
    conn = store.reader().conn
    assert one.indexed + two.indexed == 50 and one.indexed and two.indexed
    assert conn.execute("SELECT COUNT(*) FROM task_search").fetchone()[0] == 50
    assert conn.execute("SELECT position FROM task_search_state").fetchone()[0] == 50


# -- answers, on every backend -------------------------------------------------------
# SQLite's LIKE ignores the case of ASCII letters only and takes the text as written:
# PostgreSQL (stemtrace.store.pg.search) must find exactly what it finds.

HOSTILE = {
    "cafe": "café au lait",
    "CAFE": "CAFÉ AU LAIT",
    "strasse": "Straße",
    "STRASSE": "STRASSE",
    "kelvin": "273\u212a",  # KELVIN SIGN: Unicode folds it to k
    "turkish": "İstanbul \u0131l\u0131k",  # dotless i
    "greek": "σίσυφος",
    "GREEK": "ΣΊΣΥΦΟΣ",
    "decomposed": "cafe\u0301 noir",  # e and a combining accent: not é
    "percent": "50%_off",
    "under": "x_y",
    "xzy": "xzy",
    "slash": "C:\\temp\\new",
    "quote": "say \"hi\" 'there'",
    "sql": "'; DROP TABLE tasks; --",
    "html": "<script>alert(1)</script>",
    "party": "done 🎉 ok",
    "dzemal": "ǅemal",
    "space": "tab\there new\nline",
}
EXPECTED = {
    "CAFÉ": {"CAFE"},
    "café": {"cafe"},
    "caf": {"cafe", "CAFE", "decomposed"},
    "AU LAIT": {"cafe", "CAFE"},
    "é": {"cafe"},
    "straße": {"strasse"},
    "ss": {"STRASSE"},
    "273k": set(),
    "273\u212a": {"kelvin"},
    "istanbul": set(),
    "İSTANBUL": {"turkish"},
    "ILIK": set(),
    "\u0131l\u0131k": {"turkish"},
    "ΣΊΣΥΦΟΣ": {"GREEK"},
    "σίσυφος": {"greek"},
    "%": {"percent"},
    "_": {"percent", "under"},
    "x_y": {"under"},
    "X%Y": set(),
    "0%_O": {"percent"},
    "\\": {"slash"},
    "\\T": {"slash"},
    "\\\\": set(),
    '"hi"': {"quote"},
    "'there'": {"quote"},
    "drop table": {"sql"},
    "<SCRIPT>": {"html"},
    "🎉": {"party"},
    "ǆemal": set(),
    "ǅEMAL": {"dzemal"},
    "\there": {"space"},
    "new\nline": {"space"},
}


def hostile_events(t: float) -> list[Event]:
    """A task per text of :data:`HOSTILE`, in a different field each time: a failed task's
    message or error type, a name, an id (some still in flight, some finished)."""
    found = []
    for n, text in enumerate(HOSTILE.values()):
        task_id, at = f"h{n:02d}", t + n
        place = n % 4
        if place == 0:  # failed, the text its message
            failed = ended(task_id, at + 1, "failed", exc_type="ValueError", exc_message=text)
            found += [sent(task_id, at, "proj.plain", [n]), failed]
        elif place == 1:  # sent only, the text its name: in flight
            found.append(sent(task_id, at, f"proj.{text}", [n]))
        elif place == 2:  # started, the text its name, then succeeded
            found += [task_event("started", task_id, at, name=f"proj.{text}", retries=0),
                      ended(task_id, at + 1)]  # fmt: skip
        else:  # the text is the id itself, still running
            found.append(task_event("started", text, at, name="proj.plain", retries=0))
    return found


def hostile_ids() -> dict[str, str]:
    """The id of each text's task (the text itself, for every fourth)."""
    return {
        key: text if n % 4 == 3 else f"h{n:02d}" for n, (key, text) in enumerate(HOSTILE.items())
    }


def every_page(backend: Backend, filters: TaskFilters, limit: int) -> list[str]:
    """The ids of every page, newest first, each page from the cursor of the one before."""
    found: list[str] = []
    cursor = None
    while True:
        rows, cursor = backend.list_tasks(filters, cursor, limit)
        found += [row["id"] for row in rows]
        assert len(rows) <= limit
        if cursor is None:
            return found


def indexed(backend: Backend) -> Backend:
    """SQLite's store with every task in its text index, so that its index answers too."""
    if isinstance(backend, Store):
        index_all(backend, now=time.time() + 3600)
    return backend


def test_q_finds_the_texts_sqlites_like_finds(backend: Backend) -> None:
    backend.open_writer().ingest(hostile_events(NOW - 500))
    indexed(backend)
    ids = hostile_ids()
    order = list(reversed(ids.values()))  # newest first
    for q, keys in EXPECTED.items():
        expected = [task_id for task_id in order if task_id in {ids[key] for key in keys}]
        for limit in (1, 2, 50):
            assert every_page(backend, TaskFilters(q=q), limit) == expected, (q, limit)


def test_q_with_states_and_windows_reads_tasks_in_flight_and_finished(backend: Backend) -> None:
    """Tasks still in flight and finished ones, one list (PostgreSQL reads them apart)."""
    events = []
    for n in range(30):
        task_id = f"w{n:02d}"
        events.append(sent(task_id, 2000.0 + n, "proj.widget", [f"order-{n}"]))
        if n % 3:
            events.append(ended(task_id, 2000.5 + n, "failed" if n % 3 == 1 else "succeeded"))
    backend.open_writer().ingest(events)
    indexed(backend)
    newest_first = [f"w{n:02d}" for n in reversed(range(30))]
    pending = [i for i in newest_first if int(i[1:]) % 3 == 0]
    failed = [i for i in newest_first if int(i[1:]) % 3 == 1]
    assert every_page(backend, TaskFilters(q="WIDGET"), 4) == newest_first
    assert every_page(backend, TaskFilters(q="order-2"), 3) == [
        i for i in newest_first if i == "w02" or i.startswith("w2")
    ]
    assert every_page(backend, TaskFilters(q="widget", states=("PENDING",)), 4) == pending
    assert every_page(backend, TaskFilters(q="widget", states=("FAILURE", "PENDING")), 4) == [
        i for i in newest_first if i in pending or i in failed
    ]
    window = TaskFilters(q="widget", since=2010.0, until=2020.0)
    assert every_page(backend, window, 3) == [f"w{n:02d}" for n in range(19, 9, -1)]
    ranked = TaskFilters(q="ORDER-1", sort="runtime", since=0.0)
    found = backend.list_tasks(ranked, None, 50)[0]
    assert {row["id"] for row in found} == {"w01", *(f"w{n}" for n in range(10, 20))}
    assert backend.list_tasks(TaskFilters(q="no such widget"), None, 5) == ([], None)


def test_text_arriving_late_is_found(backend: Backend) -> None:
    writer = backend.open_writer()
    writer.ingest([ended("t-late", NOW - 100, name="proj.late")])  # its sent event comes later
    indexed(backend)
    writer.ingest([sent("t-late", NOW - 101, "proj.late", ["invoice-77812"])])
    found = backend.list_tasks(TaskFilters(q="INVOICE-77812"), None, 5)[0]
    assert [row["id"] for row in found] == ["t-late"]
