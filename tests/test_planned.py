"""Ids that never ran: found through the ``planned`` table, described in their flow."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from stemtrace.model import flows, planned
from stemtrace.store import Store, queries
from stemtrace.store import planned as store_planned
from stemtrace.store.ingest import Ingestor
from stemtrace.store.migrations import m010_planned_ids
from stemtrace.store.retention import Retention


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    found = Store(tmp_path / "store.db")
    yield found
    found.close()


def sent(task_id: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {"kind": "sent", "eid": uuid.uuid4().hex, "ts": ts, "host": "web", "pid": 1,
            "task_id": task_id, "name": "proj.add", "root_id": "a", **fields}  # fmt: skip


def links(*ids: str) -> list[dict[str, str]]:
    return [{"id": task_id, "name": "proj.add"} for task_id in ids]


def ended(kind: str, task_id: str, ts: float) -> dict[str, Any]:
    return {"kind": kind, "eid": uuid.uuid4().hex, "ts": ts, "host": "w", "pid": 2,
            "task_id": task_id, "worker": "w"}  # fmt: skip


def broken_chain() -> list[dict[str, Any]]:
    """a -> b (fails) -> c -> d -> e -> f: c to f never run."""
    return [
        sent("a", 1.0, chain=links("b", "c", "d", "e", "f")),
        ended("succeeded", "a", 1.1),
        sent("b", 1.2, name="proj.fail", parent_id="a", chain=links("c", "d", "e", "f")),
        ended("failed", "b", 1.3),
    ]


def test_every_link_of_a_chain_is_found_by_its_id(store: Store) -> None:
    Ingestor(store.writer()).ingest(broken_chain())
    conn = store.reader().conn
    named = {link: store_planned.named_by(conn, link) for link in "cdef"}
    assert named == dict.fromkeys("cdef", "a")
    assert store_planned.named_by(conn, "a") is None
    for link in "cdef":
        rows = queries.flow_rows(conn, link)
        assert rows is not None and {r["id"] for r in rows} == {"a", "b"}


def test_finding_a_planned_id_reads_no_table_whole(store: Store) -> None:
    conn = store.reader().conn
    sql = (
        "SELECT tasks.id FROM planned JOIN tasks ON tasks.rowid = planned.task_rowid"
        " WHERE planned.id = ?"
    )
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("x",))]
    assert plan == [
        "SEARCH planned USING PRIMARY KEY (id=?)",
        "SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)",
    ]


def test_a_chord_callback_is_found_before_it_runs(store: Store) -> None:
    members = [sent(f"m{i}", 1.0 + i, group_id="g", chord_id="cb", chord_name="proj.tsum")
               for i in range(3)]  # fmt: skip
    Ingestor(store.writer()).ingest(members)
    conn = store.reader().conn
    assert store_planned.named_by(conn, "cb") == "m0"  # the first that named it
    rows = queries.flow_rows(conn, "cb")
    assert rows is not None and {r["id"] for r in rows} == {"m0", "m1", "m2"}
    described = planned.describe(flows.build_flow(rows), "cb")
    assert described is not None
    assert described["state"] == "PLANNED" and described["size"] == 3
    assert described["summary"] == (
        "callback of a chord of 3 tasks; planned, waiting for proj.add and 2 more"
    )


def test_retention_forgets_what_the_deleted_rows_named(store: Store) -> None:
    Ingestor(store.writer()).ingest(broken_chain())
    Retention(max_tasks=1, interval=0).step(store.writer(), now=10.0)
    conn = store.reader().conn
    assert conn.execute("SELECT id FROM tasks").fetchall() == [("b",)]
    # b names c to f too, but the table remembers the first row that did.
    assert conn.execute("SELECT COUNT(*) FROM planned").fetchone()[0] == 0


def test_the_migration_fills_the_table_from_the_rows_already_stored(store: Store) -> None:
    Ingestor(store.writer()).ingest(broken_chain())
    writer = store.writer()
    writer.executescript(
        "DROP TRIGGER tasks_planned_delete; DROP TABLE planned;"
        " UPDATE tasks SET chain = 'not json' WHERE id = 'b';"
    )
    m010_planned_ids(Database(writer))
    found = writer.execute("SELECT id, task_rowid FROM planned ORDER BY id").fetchall()
    a_rowid = writer.execute("SELECT rowid FROM tasks WHERE id = 'a'").fetchone()[0]
    assert found == [(link, a_rowid) for link in "bcdef"]


def test_odd_chains_never_stop_a_write(store: Store) -> None:
    writer = store.writer()
    odd = ("not json", '"a string"', '[1, "x", {"name": "no id"}, {"id": 5}, {"id": "ok"}]', "{}")
    store_planned.remember(writer, [(rowid, chain, None) for rowid, chain in enumerate(odd)])
    assert writer.execute("SELECT id, task_rowid FROM planned").fetchall() == [("ok", 2)]


def test_a_chain_link_says_which_it_is_and_what_stopped_it(store: Store) -> None:
    Ingestor(store.writer()).ingest(broken_chain())
    rows = queries.flow_rows(store.reader().conn, "e")
    assert rows is not None
    flow = flows.build_flow(rows)
    described = planned.describe(flow, "e")
    assert described is not None
    assert (described["state"], described["role"], described["position"]) == (
        "NOT_RUN", "chain link", 5,
    )  # fmt: skip
    assert described["blocked_by"] == {
        "id": "b", "name": "proj.fail", "state": "FAILURE", "kind": "task",
    }  # fmt: skip
    assert described["summary"] == "link 5 of a chain; not run because proj.fail failed"
    assert planned.describe(flow, "a") is None  # it ran: the task itself says what it is


def test_a_link_of_a_running_chain_waits_for_the_link_that_runs() -> None:
    rows = [
        {"id": "a", "name": "proj.a", "state": "SUCCESS", "chain": links("b", "c"), "seen_at": 1.0},
        {"id": "b", "name": "proj.b", "state": "STARTED", "chain": links("c"), "parent_id": "a",
         "seen_at": 2.0},
    ]  # fmt: skip
    described = planned.describe(flows.build_flow(rows), "c")
    assert described is not None
    assert described["summary"] == "link 3 of a chain; planned, waiting for proj.b"
    assert [w["id"] for w in described["waiting_for"]] == ["b"]
