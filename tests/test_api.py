"""The JSON API through ASGI, on a real store filled with synthetic capture events.

No Redis and no Celery: each test writes the events a capture would have
published through the store's writer, then builds a fresh app on that store
(``consumer=False``) and talks to it with Starlette's ``TestClient``. Each test
runs once per backend (``tests/site.py: BACKENDS``): its own SQLite file, its
own PostgreSQL database.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

import stemtrace
from stemtrace.core import buckets
from stemtrace.core.events import Event
from stemtrace.server.api import create_api_router
from stemtrace.server.app import create_app
from stemtrace.server.browse_api import create_browse_api_router
from stemtrace.server.problems import create_problems_router
from stemtrace.server.queues import create_queues_router
from stemtrace.server.worker_page import create_worker_router
from stemtrace.settings import Settings
from stemtrace.store import open_store
from tests.factories import (
    ADD_CHILD,
    ADD_OLD,
    ADD_RUNNING,
    ALIVE,
    API_PATHS,
    BIG_GROUP,
    CHARGE,
    CHECKOUT,
    CHORD_GROUP,
    COLLECT,
    EMAIL_RETRY,
    EMAIL_REVOKED,
    FANOUT,
    FETCH,
    GHOST,
    GONE,
    HEADER,
    LOST,
    MARKUP,
    NEWEST_FIRST,
    ORPHAN,
    PARENT,
    PARSE,
    QUIET,
    SCRIPT,
    SPAWNED,
    STEP,
    TIE_A,
    TIE_B,
    TIE_C,
    TRACE,
    UNICODE_ID,
    W1,
    W2,
    WEB,
    Api,
    big_group,
    big_group_member,
    catalog,
    chain_events,
    check_retried_twice,
    chord_events,
    detail_of,
    edge_set,
    ids,
    lifecycle,
    node_map,
    ok,
    registry_entry,
    retried_twice,
    worker_event,
)
from tests.site import site_of

# -- building events as the capture side makes them -------------------------------


# -- fixtures -----------------------------------------------------------------------


def ingest(target: str, events: list[Event]) -> None:
    store = open_store(target)
    try:
        store.open_writer().ingest(events)
    finally:
        store.close()


def serve_api(
    stack: ExitStack, target: str, events: list[Event], *, raise_server_exceptions: bool = True
) -> TestClient:
    """A client of a fresh app on the store ``target`` holding ``events``."""
    ingest(target, events)
    app = create_app(Settings(db=target, consumer=False))
    client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
    return stack.enter_context(client)


@pytest.fixture
def api(db_target: str) -> Iterator[Api]:
    """``api(events)``: this test's store holding ``events`` and a fresh app reading it."""
    with ExitStack() as stack:
        yield partial(serve_api, stack, db_target)


# -- the task list ------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing(module_target: str) -> Iterator[tuple[TestClient, float]]:
    """The catalog, one app for every test that only reads it (as Datasette shares
    its read-only test app): it saves building an app and a store per test (one of
    each per backend)."""
    now = time.time()
    with ExitStack() as stack:
        yield serve_api(stack, module_target, catalog(now)), now


def test_tasks_come_newest_first_with_their_list_fields(
    listing: tuple[TestClient, float],
) -> None:
    client, now = listing
    page = ok(client, "/api/tasks")
    assert [t["id"] for t in page["tasks"]] == NEWEST_FIRST
    assert page["next_cursor"] is None
    by_id = {t["id"]: t for t in page["tasks"]}
    assert by_id[ADD_OLD]["state"] == "SUCCESS"
    assert by_id[ADD_OLD]["seen_at"] == pytest.approx(now - 7200)
    assert by_id[ADD_OLD]["queue_wait"] == pytest.approx(0.2)
    assert by_id[ADD_OLD]["runtime"] == 1.0
    assert by_id[CHARGE]["state"] == "FAILURE"
    assert by_id[CHARGE]["exc_type"] == "proj.errors.PaymentDeclined"
    assert by_id[ADD_RUNNING]["state"] == "STARTED"
    assert by_id[EMAIL_RETRY]["state"] == "RETRY"
    assert by_id[EMAIL_RETRY]["retries"] == 1
    assert by_id[EMAIL_REVOKED]["state"] == "REVOKED"
    assert by_id[ADD_CHILD]["state"] == "PENDING"
    assert by_id[ADD_CHILD]["parent_id"] == ADD_OLD


def test_cursor_pagination_walks_every_task_exactly_once(
    listing: tuple[TestClient, float],
) -> None:
    client, _ = listing
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = ok(client, "/api/tasks", **params)
        pages += 1
        assert len(page["tasks"]) <= 2
        seen.extend(t["id"] for t in page["tasks"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20, "pagination does not end"
    # The three tasks seen at the same instant straddle a page boundary.
    assert seen == NEWEST_FIRST
    assert pages == 5


def test_cursor_pagination_keeps_filters(listing: tuple[TestClient, float]) -> None:
    client, _ = listing
    first = ok(client, "/api/tasks", state="SUCCESS", limit=2)
    assert [t["id"] for t in first["tasks"]] == [TIE_C, TIE_B]
    second = ok(client, "/api/tasks", state="SUCCESS", limit=2, cursor=first["next_cursor"])
    assert [t["id"] for t in second["tasks"]] == [TIE_A, ADD_OLD]
    assert second["next_cursor"] is None


def test_filter_by_state_single_repeated_and_comma_separated(
    listing: tuple[TestClient, float],
) -> None:
    client, _ = listing
    assert ids(client, state="FAILURE") == [CHARGE]
    assert ids(client, state="pending") == [ADD_CHILD]
    assert ids(client, state="Retry") == [EMAIL_RETRY]
    broken = [EMAIL_REVOKED, CHARGE]
    assert ids(client, state=["failure", "REVOKED"]) == broken
    assert ids(client, state="failure,Revoked") == broken
    assert ids(client, state=" failure , revoked ,") == broken
    assert ids(client, state=["started", "failure,revoked"]) == [
        EMAIL_REVOKED,
        ADD_RUNNING,
        CHARGE,
    ]
    assert ids(client, state="RECEIVED") == []


def test_filter_by_name_worker_trace_and_root(listing: tuple[TestClient, float]) -> None:
    client, _ = listing
    assert ids(client, name="proj.tasks.add") == [ADD_CHILD, ADD_RUNNING, ADD_OLD]
    assert ids(client, name="proj.tasks") == []  # exact, not a prefix
    assert ids(client, worker=W2) == [EMAIL_REVOKED, EMAIL_RETRY, CHARGE]
    assert ids(client, trace_id="trace-shop") == [ADD_CHILD, ADD_OLD]
    assert ids(client, trace_id="trace-pay") == [CHARGE]
    assert ids(client, root_id=ADD_OLD) == [ADD_CHILD, ADD_OLD]
    assert ids(client, name="proj.tasks.ping", state="SUCCESS") == [TIE_C, TIE_B, TIE_A]
    assert ids(client, name="proj.tasks.add", worker=W2) == []


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("charge", [CHARGE]),  # name
        ("CHARGE", [CHARGE]),  # case-insensitive
        (EMAIL_RETRY[-12:], [EMAIL_RETRY]),  # part of the id
        ("cus_ALICE", [CHARGE]),  # a keyword argument value
        ("bob@example", [EMAIL_RETRY]),  # a positional argument value
        ("insufficient funds", [CHARGE]),  # the exception message
        ("PaymentDeclined", [CHARGE]),  # the exception type
        ("100%", [EMAIL_REVOKED]),  # % is literal: "[100,2]" does not match
        ("%", [EMAIL_REVOKED]),
        ("send_email", [EMAIL_REVOKED, EMAIL_RETRY]),
        ("sen__email", []),  # _ is literal: it does not match "send_email"
        ("nothing-like-this", []),
    ],
)
def test_filter_by_text(listing: tuple[TestClient, float], q: str, expected: list[str]) -> None:
    client, _ = listing
    assert ids(client, q=q) == expected


def test_filter_by_time_as_epoch_iso_and_age(listing: tuple[TestClient, float]) -> None:
    client, now = listing
    last_hour = NEWEST_FIRST[:-1]  # everything but ADD_OLD, seen 2 h ago
    moment = datetime.fromtimestamp(now - 3500, UTC)
    assert ids(client, since=str(now - 3500)) == last_hour
    assert ids(client, since="1h") == last_hour
    assert ids(client, since="60m") == last_hour
    assert ids(client, since="3600s") == last_hour
    assert ids(client, since="1H") == last_hour
    assert ids(client, since=moment.isoformat()) == last_hour
    assert ids(client, since=moment.strftime("%Y-%m-%dT%H:%M:%SZ")) == last_hour
    # no zone: UTC
    assert ids(client, since=moment.replace(tzinfo=None).isoformat()) == last_hour
    assert ids(client, since="3d") == NEWEST_FIRST
    assert ids(client, until="45m") == [CHARGE, ADD_OLD]
    assert ids(client, until=str(now - 3500)) == [ADD_OLD]
    assert ids(client, since="90m", until="8m") == [
        EMAIL_RETRY,
        TIE_C,
        TIE_B,
        TIE_A,
        ADD_RUNNING,
        CHARGE,
    ]
    assert ids(client, since="1h", until="2h") == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"state": "bogus"}, "unknown state 'bogus'; use one of PENDING, RECEIVED"),
        ({"state": "SUCCESS,DONE"}, "unknown state 'DONE'"),
        ({"since": "yesterday"}, "since must be epoch seconds, an ISO-8601 time or an age"),
        ({"until": "2h ago"}, "until must be epoch seconds"),
        ({"since": "5y"}, "got '5y'"),
        ({"cursor": "not-a-cursor"}, "invalid cursor: pass the next_cursor of a previous page"),
        ({"cursor": base64.urlsafe_b64encode(b'{"a": 1}').decode()}, "invalid cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["x", "y"]').decode()}, "invalid cursor"),
    ],
)
def test_bad_filters_are_422_with_the_reason(
    listing: tuple[TestClient, float], params: dict[str, str], needle: str
) -> None:
    client, _ = listing
    response = client.get("/api/tasks", params=params)
    assert response.status_code == 422
    assert needle in detail_of(response)


@pytest.mark.parametrize(
    ("params", "field", "kind"),
    [
        ({"limit": 0}, "limit", "greater_than_equal"),
        ({"limit": 501}, "limit", "less_than_equal"),
        ({"limit": "ten"}, "limit", "int_parsing"),
        ({"name": "n" * 300}, "name", "string_too_long"),
        ({"worker": ""}, "worker", "string_too_short"),
        ({"q": "q" * 201}, "q", "string_too_long"),
        ({"cursor": "c" * 513}, "cursor", "string_too_long"),
    ],
)
def test_out_of_range_parameters_are_422_naming_the_parameter(
    listing: tuple[TestClient, float], params: dict[str, Any], field: str, kind: str
) -> None:
    client, _ = listing
    response = client.get("/api/tasks", params=params)
    assert response.status_code == 422
    [problem] = detail_of(response)
    assert problem["loc"] == ["query", field]
    assert problem["type"] == kind
    assert problem["msg"]


def test_limits_at_the_edge_are_accepted(listing: tuple[TestClient, float]) -> None:
    client, _ = listing
    assert ids(client, limit=1) == [ADD_CHILD]
    assert ids(client, limit=500) == NEWEST_FIRST
    assert ids(client, name="n" * 255) == []
    assert ids(client, q="q" * 200) == []


def test_cursor_holding_a_number_too_big_for_a_float_is_422(
    listing: tuple[TestClient, float],
) -> None:
    client, _ = listing
    raw = json.dumps([int("9" * 310), "x"]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(cursor) <= 512
    response = client.get("/api/tasks", params={"cursor": cursor})
    assert response.status_code == 422
    assert "invalid cursor" in detail_of(response)


def test_cursor_holding_a_lone_surrogate_is_422(listing: tuple[TestClient, float]) -> None:
    client, _ = listing
    cursor = base64.urlsafe_b64encode(b'[1.0, "\\ud800"]').decode().rstrip("=")
    response = client.get("/api/tasks", params={"cursor": cursor})
    assert response.status_code == 422
    assert "invalid cursor" in detail_of(response)


# -- one task -----------------------------------------------------------------------


def test_task_detail_has_the_row_timeline_attempts_children_and_durations(api: Api) -> None:
    t = time.time() - 100
    client = api(retried_twice(t))
    task = ok(client, f"/api/tasks/{FETCH}")
    wanted = [
        "id", "name", "state", "parent_id", "root_id", "group_id", "trace_id", "worker",
        "retries", "args", "kwargs", "result", "exception", "traceback", "sent_at",
        "received_at", "started_at", "finished_at", "events", "attempts", "children",
        "durations", "phases",
    ]  # fmt: skip
    for field in wanted:
        assert field in task, field
    assert task["id"] == FETCH
    assert task["name"] == "proj.tasks.fetch"
    assert task["root_id"] == FETCH
    assert task["group_id"] is None
    assert task["trace_id"] == "trace-feed"
    assert task["args"] == ["https://example.com/feed"]
    assert task["kwargs"] == {"timeout": 5}
    assert "state_rank" not in task
    check_retried_twice(task, t)
    # args live in the row, not repeated in each history entry
    assert "args" not in task["events"][0]
    assert task["events"][0]["host"] == WEB
    assert [p["state"] for p in task["phases"]] == [
        "PENDING",
        "RECEIVED",
        "STARTED",
        "RETRY",
        "STARTED",
        "RETRY",
        "STARTED",
        "SUCCESS",
    ]
    assert task["phases"][-1]["phase"] == "finished"
    assert task["durations"] == pytest.approx(
        {"queued": 0.2, "waiting in worker": 0.3, "running": 3.0, "waiting for retry": 5.6}
    )
    assert [c["id"] for c in task["children"]] == [PARSE]
    assert task["children"][0]["name"] == "proj.tasks.parse"
    assert task["children"][0]["state"] == "SUCCESS"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batches", ["one batch", "one event per batch"])
def test_events_arriving_in_any_order_give_the_same_task(
    db_target: str, api: Api, seed: int, batches: str
) -> None:
    t = time.time() - 100
    events = retried_twice(t)
    random.Random(seed).shuffle(events)
    if batches == "one event per batch":
        store = open_store(db_target)
        try:
            writer = store.open_writer()
            for one in events:
                writer.ingest([one])
            writer.ingest(events[:3])  # re-delivered events change nothing
        finally:
            store.close()
        client = api([])
    else:
        client = api(events)
    task = ok(client, f"/api/tasks/{FETCH}")
    check_retried_twice(task, t)
    assert task["durations"] == pytest.approx(
        {"queued": 0.2, "waiting in worker": 0.3, "running": 3.0, "waiting for retry": 5.6}
    )


def test_failed_task_detail_carries_the_exception(api: Api) -> None:
    t = time.time() - 50
    message = "upstream said: " + "no " * 200
    client = api(
        lifecycle(
            CHARGE,
            "proj.tasks.charge",
            t,
            "FAILURE",
            runtime=0.5,
            exc=("proj.errors.PaymentDeclined", message),
        )
    )
    task = ok(client, f"/api/tasks/{CHARGE}")
    assert task["state"] == "FAILURE"
    assert task["exception"] == {"type": "proj.errors.PaymentDeclined", "message": message}
    assert task["traceback"].startswith("Traceback (most recent call last):")
    assert task["finished_at"] == pytest.approx(t + 0.7)
    assert task["result"] is None
    assert [a["state"] for a in task["attempts"]] == ["FAILURE"]
    assert task["attempts"][0]["exc_message"] == message
    assert task["durations"] == pytest.approx(
        {"queued": 0.1, "waiting in worker": 0.1, "running": 0.5}
    )
    # The list shortens long messages; the detail keeps them whole.
    [row] = ok(client, "/api/tasks")["tasks"]
    assert row["exc_message"] == message[:300] + "…"


def test_unfinished_task_phase_runs_until_now(api: Api) -> None:
    t = time.time() - 30
    client = api(lifecycle(ADD_RUNNING, "proj.tasks.add", t, "STARTED"))
    task = ok(client, f"/api/tasks/{ADD_RUNNING}")
    assert task["state"] == "STARTED"
    assert task["finished_at"] is None
    assert [a["state"] for a in task["attempts"]] == ["STARTED"]
    last = task["phases"][-1]
    assert (last["phase"], last["end"]) == ("running", None)
    assert 29.0 < last["duration"] < 120.0


def test_unknown_task_is_404_with_a_clear_detail(api: Api) -> None:
    client = api(lifecycle(ADD_OLD, "proj.tasks.add", time.time()))
    response = client.get("/api/tasks/no-such-task")
    assert response.status_code == 404
    assert detail_of(response) == "no task 'no-such-task' is known to this stemtrace server"


# -- flows --------------------------------------------------------------------------


def test_chain_broken_at_its_second_link_shows_the_rest_as_not_run(api: Api) -> None:
    client = api(chain_events(time.time() - 60, "FAILURE"))
    flow = ok(client, f"/api/flows/{STEP[1]}")
    nodes = node_map(flow)
    assert set(nodes) == set(STEP[1:])
    assert nodes[STEP[1]]["state"] == "SUCCESS"
    assert nodes[STEP[2]]["state"] == "FAILURE"
    for planned, name in ((STEP[3], "proj.tasks.step3"), (STEP[4], "proj.tasks.step4")):
        assert nodes[planned]["state"] == "NOT_RUN"
        assert nodes[planned]["planned"] is True
        assert nodes[planned]["name"] == name
        assert nodes[planned]["attempts"] == 0
    assert edge_set(flow) == {
        (STEP[1], STEP[2], "chain"),
        (STEP[2], STEP[3], "chain"),
        (STEP[3], STEP[4], "chain"),
    }
    assert flow["root_id"] == STEP[1]
    # The same flow from any captured member.
    assert edge_set(ok(client, f"/api/flows/{STEP[2]}")) == edge_set(flow)
    # A link that never ran opens the same flow, and answers as a planned task.
    assert edge_set(ok(client, f"/api/flows/{STEP[3]}")) == edge_set(flow)
    task = ok(client, f"/api/tasks/{STEP[4]}")
    assert (task["state"], task["name"]) == ("NOT_RUN", "proj.tasks.step4")
    summary = "link 4 of a chain; not run because proj.tasks.step2 failed"
    assert task["planned"]["summary"] == summary


def test_chain_still_running_shows_the_rest_as_planned(api: Api) -> None:
    client = api(chain_events(time.time() - 60, "STARTED"))
    nodes = node_map(ok(client, f"/api/flows/{STEP[1]}"))
    assert nodes[STEP[2]]["state"] == "STARTED"
    assert [nodes[s]["state"] for s in STEP[3:]] == ["PLANNED", "PLANNED"]


def test_chord_has_a_chord_node_with_group_and_chord_edges(api: Api) -> None:
    client = api(chord_events(time.time() - 60))
    flow = ok(client, f"/api/flows/{FANOUT}")
    nodes = node_map(flow)
    group_node = f"group:{CHORD_GROUP}"
    assert set(nodes) == {FANOUT, COLLECT, group_node, *HEADER}
    chord = nodes[group_node]
    assert chord["kind"] == "chord"
    assert chord["size"] == 3
    assert chord["counts"] == {"SUCCESS": 3}
    assert chord["state"] == "SUCCESS"
    assert chord["collapsed"] is False
    assert chord["callback_id"] == COLLECT
    assert chord["name"] == "proj.tasks.fetch_page x 3"
    assert nodes[COLLECT]["state"] == "SUCCESS"
    assert edge_set(flow) == {
        (FANOUT, group_node, "spawned"),
        *((group_node, member, "group") for member in HEADER),
        *((member, COLLECT, "chord") for member in HEADER),
    }
    assert flow["root_id"] == FANOUT
    # Reached from the callback or through the group id, the flow is the same.
    assert edge_set(ok(client, f"/api/flows/{COLLECT}")) == edge_set(flow)
    assert edge_set(ok(client, f"/api/flows/{CHORD_GROUP}")) == edge_set(flow)
    # The callback shares the header's group id but is not a member.
    members = ok(client, f"/api/groups/{CHORD_GROUP}/members")
    assert members["size"] == 3
    assert [m["id"] for m in members["members"]] == HEADER


def test_chord_with_a_failed_member_leaves_its_callback_not_run(api: Api) -> None:
    t = time.time() - 60
    events = [e for e in chord_events(t) if e["task_id"] not in (HEADER[1], COLLECT)]
    events += lifecycle(
        HEADER[1],
        "proj.tasks.fetch_page",
        t + 1.1,
        "FAILURE",
        sender=W1,
        parent_id=FANOUT,
        root_id=FANOUT,
        trace_id=FANOUT,
        group_id=CHORD_GROUP,
        group_index=1,
        chord_id=COLLECT,
        chord_name="proj.tasks.collect",
    )
    nodes = node_map(ok(api(events), f"/api/flows/{FANOUT}"))
    chord = nodes[f"group:{CHORD_GROUP}"]
    assert chord["counts"] == {"SUCCESS": 2, "FAILURE": 1}
    assert chord["state"] == "FAILURE"
    assert nodes[COLLECT]["state"] == "NOT_RUN"
    assert nodes[COLLECT]["name"] == "proj.tasks.collect"


def test_task_sent_from_inside_another_gets_a_spawned_edge(api: Api) -> None:
    t = time.time() - 60
    client = api(
        [
            *lifecycle(PARENT, "proj.tasks.import_csv", t),
            *lifecycle(
                SPAWNED, "proj.tasks.notify", t + 0.5, sender=W1, parent_id=PARENT, root_id=PARENT
            ),
        ]
    )
    flow = ok(client, f"/api/flows/{SPAWNED}")
    assert set(node_map(flow)) == {PARENT, SPAWNED}
    assert edge_set(flow) == {(PARENT, SPAWNED, "spawned")}
    assert flow["root_id"] == PARENT


def test_parent_never_captured_becomes_a_placeholder(api: Api) -> None:
    client = api(
        lifecycle(
            ORPHAN, "proj.tasks.notify", time.time() - 60, sender=W2, parent_id=GHOST, root_id=GHOST
        )
    )
    flow = ok(client, f"/api/flows/{ORPHAN}")
    nodes = node_map(flow)
    assert set(nodes) == {GHOST, ORPHAN}
    assert nodes[GHOST]["placeholder"] is True
    assert nodes[GHOST]["state"] == "UNKNOWN"
    assert nodes[GHOST]["name"] is None
    assert edge_set(flow) == {(GHOST, ORPHAN, "spawned")}
    assert flow["root_id"] == GHOST


def test_big_group_comes_collapsed_and_expands_on_request(api: Api) -> None:
    client = api(big_group(time.time() - 600))
    group_node = f"group:{BIG_GROUP}"
    for seed in (BIG_GROUP, big_group_member(123)):
        flow = ok(client, f"/api/flows/{seed}")
        [node] = flow["nodes"]
        assert node["id"] == group_node
        assert node["kind"] == "group"
        assert node["collapsed"] is True
        assert node["size"] == 300
        assert node["counts"] == {"SUCCESS": 240, "FAILURE": 30, "STARTED": 30}
        assert node["state"] == "FAILURE"
        assert node["finished_at"] is None  # 30 members still running
        assert flow["edges"] == []
        assert flow["root_id"] == group_node

    expanded = ok(client, f"/api/flows/{BIG_GROUP}", expand=BIG_GROUP)
    nodes = node_map(expanded)
    assert len(nodes) == 301
    assert nodes[group_node]["collapsed"] is False
    assert nodes[big_group_member(10)]["state"] == "FAILURE"
    assert nodes[big_group_member(11)]["state"] == "STARTED"
    assert edge_set(expanded) == {(group_node, big_group_member(i), "group") for i in range(300)}
    # collapse_over moves the threshold both ways
    assert len(ok(client, f"/api/flows/{BIG_GROUP}", collapse_over=300)["nodes"]) == 301
    assert len(ok(client, f"/api/flows/{BIG_GROUP}", expand="other-group")["nodes"]) == 1


def test_group_members_come_in_pages_with_the_true_size(api: Api) -> None:
    client = api(big_group(time.time() - 600))
    first = ok(client, f"/api/groups/{BIG_GROUP}/members")
    assert first["group_id"] == BIG_GROUP
    assert first["size"] == 300
    assert first["offset"] == 0
    assert [m["id"] for m in first["members"]] == [big_group_member(i) for i in range(100)]
    page = ok(client, f"/api/groups/{BIG_GROUP}/members", offset=250, limit=100)
    assert page["size"] == 300
    assert [m["id"] for m in page["members"]] == [big_group_member(i) for i in range(250, 300)]
    assert page["members"][0]["state"] == "FAILURE"  # index 250
    walked: list[str] = []
    for offset in range(0, 300, 70):
        walked += [
            m["id"]
            for m in ok(client, f"/api/groups/{BIG_GROUP}/members", offset=offset, limit=70)[
                "members"
            ]
        ]
    assert walked == [big_group_member(i) for i in range(300)]
    beyond = ok(client, f"/api/groups/{BIG_GROUP}/members", offset=300)
    assert (beyond["size"], beyond["members"]) == (300, [])


def test_group_members_with_a_huge_offset_is_not_a_server_error(api: Api) -> None:
    client = api(big_group(time.time() - 600), raise_server_exceptions=False)
    response = client.get(f"/api/groups/{BIG_GROUP}/members", params={"offset": 2**63})
    assert response.status_code == 422, response.text


def test_unknown_flow_and_group_are_404(api: Api) -> None:
    client = api(chord_events(time.time() - 60))
    response = client.get("/api/flows/nope")
    assert response.status_code == 404
    assert detail_of(response) == "no task or group 'nope' is known to this stemtrace server"
    response = client.get("/api/groups/nope/members")
    assert response.status_code == 404
    assert detail_of(response) == "no group 'nope' is known to this stemtrace server"
    # A task id is not a group id.
    assert client.get(f"/api/groups/{FANOUT}/members").status_code == 404


# -- traces -------------------------------------------------------------------------


def test_trace_lists_its_tasks_roots_and_failures(api: Api) -> None:
    t = time.time() - 60
    client = api(
        [
            *lifecycle(CHECKOUT[0], "proj.tasks.checkout", t, trace_id=TRACE),
            *lifecycle(
                CHECKOUT[1],
                "proj.tasks.charge",
                t + 1,
                "FAILURE",
                sender=W1,
                parent_id=CHECKOUT[0],
                root_id=CHECKOUT[0],
                trace_id=TRACE,
            ),
            *lifecycle(
                CHECKOUT[2],
                "proj.tasks.reserve",
                t + 2,
                sender=W1,
                parent_id=CHECKOUT[0],
                root_id=CHECKOUT[0],
                trace_id=TRACE,
            ),
            # Sent by an uninstrumented process: its parent is outside the trace.
            *lifecycle(
                CHECKOUT[3],
                "proj.tasks.audit",
                t + 3,
                parent_id="elsewhere",
                root_id="elsewhere",
                trace_id=TRACE,
                runtime=2.0,
            ),
            *lifecycle(ADD_OLD, "proj.tasks.add", t + 4, trace_id="another-trace"),
        ]
    )
    trace = ok(client, f"/api/traces/{TRACE}")
    assert trace["trace_id"] == TRACE
    assert [task["id"] for task in trace["tasks"]] == CHECKOUT
    assert trace["count"] == 4
    assert trace["roots"] == [CHECKOUT[0], CHECKOUT[3]]
    assert trace["failures"] == 1
    assert trace["started_at"] == pytest.approx(t)
    assert trace["finished_at"] == pytest.approx(t + 3 + 0.2 + 2.0)
    response = client.get("/api/traces/no-such-trace")
    assert response.status_code == 404
    assert detail_of(response) == "no trace 'no-such-trace' is known to this stemtrace server"


def test_trace_still_running_has_no_finish(api: Api) -> None:
    t = time.time() - 60
    client = api(
        [
            *lifecycle(CHECKOUT[0], "proj.tasks.checkout", t, trace_id=TRACE),
            *lifecycle(
                CHECKOUT[1],
                "proj.tasks.charge",
                t + 1,
                "STARTED",
                sender=W1,
                parent_id=CHECKOUT[0],
                root_id=CHECKOUT[0],
                trace_id=TRACE,
            ),
        ]
    )
    trace = ok(client, f"/api/traces/{TRACE}")
    assert (trace["count"], trace["failures"], trace["finished_at"]) == (2, 0, None)
    assert trace["roots"] == [CHECKOUT[0]]


# -- registry -----------------------------------------------------------------------


def test_registry_merges_definitions_and_executions(api: Api) -> None:
    t = time.time() - 3600
    events = [
        worker_event(
            "worker_online",
            W1,
            t,
            sw_ver="5.4.0",
            pool="prefork",
            concurrency=4,
            queues=["celery"],
            freq=2.0,
            tasks=[
                registry_entry("proj.tasks.add", signature="(x, y)"),
                registry_entry(
                    "proj.tasks.charge",
                    autoretry_for=["Timeout"],
                    max_retries=5,
                    retry_backoff=True,
                    rate_limit="10/m",
                    time_limit=30,
                    soft_time_limit=25,
                ),
                registry_entry("proj.tasks.unused"),
            ],
        ),
        worker_event(
            "worker_online",
            W2,
            t + 1,
            sw_ver="5.4.0",
            pool="solo",
            concurrency=1,
            queues=["celery"],
            freq=2.0,
            tasks=[registry_entry("proj.tasks.add", signature="(x, y)")],
        ),
    ]
    for index, runtime in enumerate((4.0, 1.0, 3.0, 2.0)):
        events += lifecycle(f"add-{index}", "proj.tasks.add", t + 10 + index, runtime=runtime)
    events += lifecycle("charge-0", "proj.tasks.charge", t + 20, "FAILURE", runtime=0.5)
    events += lifecycle("charge-1", "proj.tasks.charge", t + 21, "RETRY")
    events += lifecycle("charge-2", "proj.tasks.charge", t + 22, "REVOKED")
    events += lifecycle("charge-3", "proj.tasks.charge", t + 23, runtime=0.25)
    events += lifecycle("legacy-0", "proj.tasks.legacy", t + 30, runtime=7.0)
    client = api(events)
    entries = {entry["name"]: entry for entry in ok(client, "/api/registry")["tasks"]}
    assert list(entries) == [
        "proj.tasks.add",
        "proj.tasks.charge",
        "proj.tasks.legacy",
        "proj.tasks.unused",
    ]

    add = entries["proj.tasks.add"]
    assert add["defined"] is True
    assert add["module"] == "proj.tasks"
    assert add["signature"] == "(x, y)"
    assert sorted(add["workers"]) == [W1, W2]
    assert add["counts"] == {
        "total": 4,
        "succeeded": 4,
        "failed": 0,
        "revoked": 0,
        "active": 0,
        "retried": 0,
    }
    assert add["failure_rate"] == 0.0
    assert add["retry_rate"] == 0.0
    # run times are read from the rollups' histogram: exact to the bucket (core.buckets)
    assert add["runtime_p50"] == from_buckets([4.0, 1.0, 3.0, 2.0], 0.50)
    assert add["runtime_p95"] == from_buckets([4.0, 1.0, 3.0, 2.0], 0.95)
    assert buckets.index(add["runtime_p50"]) in (buckets.index(2.0), buckets.index(3.0))
    assert buckets.index(add["runtime_p95"]) == buckets.index(4.0)
    assert add["last_seen"] == pytest.approx(t + 13)

    charge = entries["proj.tasks.charge"]
    assert charge["autoretry_for"] == ["Timeout"]
    assert charge["max_retries"] == 5
    assert charge["rate_limit"] == "10/m"
    assert (charge["time_limit"], charge["soft_time_limit"]) == (30, 25)
    assert charge["workers"] == [W1]
    assert charge["counts"] == {
        "total": 4,
        "succeeded": 1,
        "failed": 1,
        "revoked": 1,
        "active": 1,
        "retried": 1,
    }
    assert charge["failure_rate"] == 0.25
    assert charge["retry_rate"] == 0.25
    # finished runs: the failure's 0.5 s and the success's 0.25 s
    assert charge["runtime_p50"] == from_buckets([0.5, 0.25], 0.50)
    assert charge["runtime_p95"] == from_buckets([0.5, 0.25], 0.95)

    legacy = entries["proj.tasks.legacy"]  # seen only in executions
    assert legacy["defined"] is False
    assert (legacy["module"], legacy["signature"], legacy["workers"]) == (None, None, [])
    assert legacy["counts"]["total"] == 1
    assert legacy["runtime_p50"] == from_buckets([7.0], 0.50)

    unused = entries["proj.tasks.unused"]  # defined, never run
    assert unused["defined"] is True
    assert unused["counts"]["total"] == 0
    assert (unused["failure_rate"], unused["retry_rate"]) == (None, None)
    assert (unused["runtime_p50"], unused["runtime_p95"], unused["last_seen"]) == (
        None,
        None,
        None,
    )


# -- workers ------------------------------------------------------------------------


def test_workers_online_lost_and_offline(api: Api, db_target: str) -> None:
    now = time.time()

    def online(worker: str, ts: float, freq: float) -> Event:
        return worker_event(
            "worker_online",
            worker,
            ts,
            sw_ver="5.4.0",
            pool="prefork",
            concurrency=4,
            queues=["celery", "emails"],
            freq=freq,
            tasks=[registry_entry("proj.tasks.add")],
        )

    def beat(worker: str, ts: float, freq: float, **fields: Any) -> Event:
        return worker_event("worker_heartbeat", worker, ts, freq=freq, dropped=0, **fields)

    client = api(
        [
            online(ALIVE, now - 30, 2.0),
            beat(ALIVE, now - 4, 2.0, active=1, processed=12, loadavg=[0.5, 0.4, 0.3]),
            # an older heartbeat delivered late does not go back in time
            beat(ALIVE, now - 10, 2.0, active=3, processed=10, loadavg=[0.9, 0.8, 0.7]),
            *lifecycle("running-1", "proj.tasks.add", now - 20, "STARTED", worker=ALIVE),
            *lifecycle("done-1", "proj.tasks.add", now - 25, worker=ALIVE),
            # freq 30 s: silent for 80 s is under three heartbeats, 100 s is over
            online(QUIET, now - 300, 30.0),
            beat(QUIET, now - 80, 30.0, active=0, processed=5, loadavg=[0.1, 0.1, 0.1]),
            online(LOST, now - 300, 30.0),
            beat(LOST, now - 100, 30.0, active=0, processed=5, loadavg=[0.1, 0.1, 0.1]),
            online(GONE, now - 100, 2.0),
            worker_event("worker_offline", GONE, now - 50, dropped=3),
        ]
    )
    workers = {w["hostname"]: w for w in ok(client, "/api/workers")["workers"]}
    assert set(workers) == {ALIVE, QUIET, LOST, GONE}
    alive = workers[ALIVE]
    assert alive["state"] == "online"
    assert alive["last_heartbeat"] == pytest.approx(now - 4)
    assert alive["heartbeat_freq"] == 2.0
    assert (alive["active"], alive["processed"]) == (1, 12)
    assert alive["loadavg"] == [0.5, 0.4, 0.3]
    assert alive["queues"] == ["celery", "emails"]
    assert (alive["pool"], alive["concurrency"], alive["sw_ver"]) == ("prefork", 4, "5.4.0")
    assert alive["online_at"] == pytest.approx(now - 30)
    assert [(r["id"], r["name"]) for r in alive["running"]] == [("running-1", "proj.tasks.add")]
    assert alive["running"][0]["started_at"] == pytest.approx(now - 19.8)
    assert workers[QUIET]["state"] == "online"
    assert workers[LOST]["state"] == "lost"
    assert workers[LOST]["running"] == []
    gone = workers[GONE]
    assert gone["state"] == "offline"
    assert gone["offline_at"] == pytest.approx(now - 50)
    assert gone["dropped"] == 3
    store = open_store(db_target)  # /metrics, the queues and a task's page skip what runs
    try:
        bare = {w["hostname"]: w for w in store.workers(running=False)}
    finally:
        store.close()
    assert bare == {host: {**w, "running": []} for host, w in workers.items()}


def test_worker_back_online_after_going_offline(api: Api) -> None:
    now = time.time()
    client = api(
        [
            worker_event("worker_online", W1, now - 100, freq=2.0, tasks=[]),
            worker_event("worker_offline", W1, now - 50),
            worker_event("worker_online", W1, now - 10, freq=2.0, tasks=[]),
        ]
    )
    [worker] = ok(client, "/api/workers")["workers"]
    assert worker["state"] == "online"
    assert worker["online_at"] == pytest.approx(now - 10)


# -- health -------------------------------------------------------------------------


def test_health_reports_store_and_no_consumer(api: Api, db_target: str) -> None:
    client = api(catalog(time.time()))
    health = ok(client, "/api/health")
    assert health["status"] == "ok"
    assert health["version"] == stemtrace.__version__
    assert health["consumer"] is None
    store = open_store(db_target)
    try:
        assert health["store"]["path"] == store.path
    finally:
        store.close()
    assert health["store"]["tasks"] == len(NEWEST_FIRST)
    assert health["store"]["size_bytes"] > 0


def test_health_counts_the_sqlite_file_and_its_log(api: Api, db_path: Path) -> None:
    client = api(catalog(time.time()))
    health = ok(client, "/api/health")
    assert health["store"]["path"] == str(db_path)
    on_disk = sum(p.stat().st_size for p in (db_path, Path(f"{db_path}-wal")) if p.exists())
    assert health["store"]["size_bytes"] == on_disk > 0


def test_health_of_an_empty_store(api: Api) -> None:
    client = api([])
    health = ok(client, "/api/health")
    assert (health["status"], health["store"]["tasks"]) == ("ok", 0)
    assert ok(client, "/api/tasks") == {"tasks": [], "next_cursor": None}
    assert ok(client, "/api/workers") == {"workers": []}
    assert ok(client, "/api/registry") == {"tasks": []}


# -- hostile input --------------------------------------------------------------------


def test_odd_input_never_makes_a_server_error(api: Api) -> None:
    now = time.time()
    client = api(
        [
            *catalog(now),
            *lifecycle(
                UNICODE_ID,
                "proj.tâches.envoyer",
                now - 10,
                args=(SCRIPT,),
                kwargs={"note": "nul\x00byte"},
                trace_id="trace-✓",
            ),
        ],
        raise_server_exceptions=False,
    )
    # Real data with unicode and markup round-trips as JSON, never as HTML.
    task = ok(client, f"/api/tasks/{UNICODE_ID}")
    assert (task["id"], task["name"], task["args"]) == (UNICODE_ID, "proj.tâches.envoyer", [SCRIPT])
    assert task["kwargs"] == {"note": "nul\x00byte"}
    assert ids(client, q=SCRIPT) == [UNICODE_ID]
    assert ids(client, q="✓-🚀") == [UNICODE_ID]
    assert ids(client, trace_id="trace-✓") == [UNICODE_ID]
    assert ok(client, "/api/traces/trace-✓")["roots"] == [UNICODE_ID]

    long_id = "é" * 255
    urls = [
        "/api/tasks/%00",
        "/api/tasks/a%00b",
        f"/api/tasks/{MARKUP}",
        f"/api/tasks/{long_id}",
        "/api/tasks/" + "x" * 256,
        "/api/tasks/%ED%A0%80",
        "/api/tasks/%FF%FE",
        "/api/tasks/a%2Fb",
        "/api/tasks/..%2F..%2Fetc%2Fpasswd",
        "/api/flows/%00",
        f"/api/flows/{MARKUP}",
        f"/api/flows/{long_id}",
        f"/api/flows/{UNICODE_ID}?expand=%00&expand=" + "g" * 255,
        f"/api/flows/{UNICODE_ID}?collapse_over=0",
        f"/api/flows/{UNICODE_ID}?collapse_over=99999999999999999999999",
        "/api/traces/%F0%9F%92%A5",
        f"/api/traces/{MARKUP}",
        "/api/groups/%00/members",
        f"/api/groups/{MARKUP}/members?offset=0&limit=1000",
        "/api/groups/g/members?offset=-1",
        "/api/groups/g/members?limit=1001",
        "/api/tasks?q=%00",
        f"/api/tasks?q={SCRIPT}",
        "/api/tasks?q=" + "%25" * 200,
        "/api/tasks?q=" + "_" * 200,
        "/api/tasks?q=%5C",
        "/api/tasks?q=%ED%A0%80",
        "/api/tasks?q=" + "é" * 200,
        "/api/tasks?name=%00",
        "/api/tasks?name=" + "n" * 255,
        "/api/tasks?name=" + "🚀" * 255,
        f"/api/tasks?worker={SCRIPT}",
        "/api/tasks?root_id=%FF",
        "/api/tasks?state=%00",
        "/api/tasks?state=,,,",
        f"/api/tasks?state={SCRIPT}",
        "/api/tasks?since=%00",
        "/api/tasks?since=" + "9" * 64,
        "/api/tasks?since=" + "9" * 63 + "w",
        "/api/tasks?since=nan",
        "/api/tasks?since=-inf",
        "/api/tasks?until=-1e308",
        "/api/tasks?since=0001-01-01T00:00:00%2B14:00",
        "/api/tasks?until=9999-12-31T23:59:59-14:00",
        "/api/tasks?since=2024-02-30",
        "/api/tasks?cursor=%00",
        "/api/tasks?cursor=" + "A" * 512,
        "/api/tasks?cursor=" + "_" * 512,
        f"/api/tasks?cursor={SCRIPT}",
        "/api/tasks?limit=abc",
        "/api/tasks?limit=99999999999999999999999",
        "/api/tasks?limit=-1",
    ]
    responses = {url: client.get(url) for url in urls}
    statuses = {url: response.status_code for url, response in responses.items()}
    assert {url: status for url, status in statuses.items() if status >= 500} == {}
    not_json = [
        url for url, r in responses.items() if r.headers["content-type"] != "application/json"
    ]
    assert not_json == []
    # The edges of what is accepted answer as expected, not merely without error.
    assert statuses[f"/api/tasks/{long_id}"] == 404
    assert statuses["/api/tasks/" + "x" * 256] == 422
    assert statuses[f"/api/tasks/{MARKUP}"] == 404
    assert statuses[f"/api/flows/{MARKUP}"] == 404
    assert statuses["/api/tasks?name=" + "🚀" * 255] == 200
    assert statuses["/api/tasks?since=%00"] == 422
    assert statuses["/api/tasks?cursor=" + "A" * 512] == 422
    assert statuses["/api/groups/g/members?offset=-1"] == 422
    detail = detail_of(responses[f"/api/tasks/{MARKUP}"])
    assert detail == f"no task {MARKUP!r} is known to this stemtrace server"


# -- the OpenAPI document -------------------------------------------------------------


def test_openapi_lists_every_api_path(api: Api, db_target: str) -> None:
    client = api([])
    document = ok(client, "/openapi.json")
    documented = {path for path in document["paths"] if path.startswith("/api")}
    store = open_store(db_target)
    try:
        routers = [create_api_router(site_of(store)), create_browse_api_router(site_of(store)),
                   create_problems_router(site_of(store)), create_queues_router(site_of(store)),
                   create_worker_router(site_of(store))]  # fmt: skip
        routed = {getattr(r, "path", "") for router in routers for r in router.routes}
        routed = {path.replace(":path}", "}") for path in routed if path.startswith("/api")}
    finally:
        store.close()
    assert documented == routed == API_PATHS
    for path in API_PATHS:
        assert set(document["paths"][path]) == {"get"}, path
        assert document["paths"][path]["get"]["summary"], path
    parameters = {p["name"] for p in document["paths"]["/api/tasks"]["get"]["parameters"]}
    assert parameters == {
        "state", "name", "worker", "queue", "trace_id", "root_id", "q", "since", "until", "sort",
        "limit", "cursor",
    }  # fmt: skip


def test_router_mounted_in_a_host_app_reports_its_consumer(db_target: str) -> None:
    store = open_store(db_target)
    try:
        store.open_writer().ingest(lifecycle(ADD_OLD, "proj.tasks.add", time.time() - 5))
        status = {"connected": False, "error": "Connection refused"}
        host = FastAPI()
        host.include_router(create_api_router(site_of(store, lambda: status)), prefix="/observe")
        with TestClient(host) as client:
            health = ok(client, "/observe/api/health")
            assert health["status"] == "degraded"
            assert health["consumer"] == status
            assert health["store"]["tasks"] == 1
            assert ok(client, f"/observe/api/tasks/{ADD_OLD}")["state"] == "SUCCESS"
            assert client.get("/api/health").status_code == 404
            assert "/observe/api/tasks" in ok(client, "/openapi.json")["paths"]
    finally:
        store.close()


def from_buckets(runs: list[float], q: float) -> float | None:
    return buckets.percentile(buckets.histogram(runs), q)
