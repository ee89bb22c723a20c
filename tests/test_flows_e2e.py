"""Real worker -> Redis stream -> consumer -> SQLite -> JSON API, for each canvas shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from celery import chain, chord, group
from starlette.testclient import TestClient

import stemtrace
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from tests.observed import Observed, edges, node
from tests.proj import make_app
from tests.support import Scenario, celery_worker, wait_for


@pytest.fixture
def observed(scenario: Scenario, tmp_path: Path) -> Iterator[Observed]:
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    settings = Settings(broker=scenario.broker, stream=scenario.stream, db=str(tmp_path / "e.db"))
    with celery_worker(scenario), TestClient(create_app(settings)) as http:
        yield Observed(app, http)
    capture.publisher.close(1)
    app.close()


def test_canvas_shapes_through_the_api(observed: Observed) -> None:
    app = observed.app
    add, tsum, fail = (app.tasks[n] for n in ("proj.add", "proj.tsum", "proj.fail"))

    # A chain that breaks in the middle: the links after it are NOT_RUN.
    broken = chain(add.s(1, 1), fail.s(), add.s(5), add.s(6)).apply_async()
    first, failing, third = (
        broken.parent.parent.parent.id,
        broken.parent.parent.id,
        broken.parent.id,
    )
    flow = observed.flow(first, settled=2)
    assert flow["root_id"] == first
    assert edges(flow, "chain") == {(first, failing), (failing, third), (third, broken.id)}
    assert node(flow, failing)["state"] == "FAILURE"
    assert node(flow, third)["state"] == node(flow, broken.id)["state"] == "NOT_RUN"
    assert node(flow, third)["name"] == "proj.add"
    assert observed.task(failing, "FAILURE")["exception"]["type"] == "ValueError"

    # A chord: fan-out to the members, fan-in to the callback.
    fanned = chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
    assert fanned.get(timeout=20) == 6
    flow = observed.flow(fanned.id, settled=4)
    members = [t["id"] for t in wait_for(lambda: _members(observed, fanned.id), timeout=30)]
    [chord_node] = [n for n in flow["nodes"] if n["kind"] == "chord"]
    assert chord_node["size"] == 3 and chord_node["counts"] == {"SUCCESS": 3}
    assert edges(flow, "group") == {(chord_node["id"], m) for m in members}
    assert edges(flow, "chord") == {(m, fanned.id) for m in members}
    assert flow["root_id"] == chord_node["id"]

    # Nested: chain(add, chord([chain(add, add), add], tsum), add)
    nested = chain(
        add.s(1, 1), chord([chain(add.s(1), add.s(1)), add.s(10)], tsum.s()), add.s(100)
    ).apply_async()
    assert nested.get(timeout=30) == 116
    flow = observed.flow(nested.id, settled=6)
    tasks = [n for n in flow["nodes"] if n["kind"] == "task"]
    assert len(tasks) == 6 and {n["state"] for n in tasks} == {"SUCCESS"}
    [inner] = [n for n in flow["nodes"] if n["kind"] == "chord"]
    assert inner["size"] == 2
    head = flow["root_id"]
    assert (head, inner["id"]) in edges(flow, "chain")
    assert len(edges(flow, "chord")) == 2
    assert any(target == nested.id for _, target in edges(flow, "chain"))


def answered(
    observed: Observed,
    url: str,
    state: str | None = None,
    until: Callable[[dict[str, Any]], bool] = lambda found: True,
) -> dict[str, Any]:
    """The JSON at ``url`` once it answers 200 (and ``state`` is the record's, and
    ``until`` holds of it)."""

    def ready() -> dict[str, Any] | None:
        response = observed.http.get(url)
        found: dict[str, Any] | None = response.json() if response.status_code == 200 else None
        wanted = found and (state is None or found.get("state") == state) and until(found)
        return found if wanted else None

    found: dict[str, Any] = wait_for(ready, timeout=30)
    return found


def test_every_id_celery_handed_out_opens_though_it_never_ran(observed: Observed) -> None:
    app = observed.app
    add, fail, slow, tsum = (app.tasks[f"proj.{n}"] for n in ("add", "fail", "slow", "tsum"))

    # A chain of six that breaks at link 2: links 3 to 6 never run, and the
    # id Celery hands back is link 6's.
    broken = chain(add.s(1, 1), fail.s(), add.s(3), add.s(4), add.s(5), add.s(6)).apply_async()
    links, step = [], broken
    while step is not None:
        links.insert(0, step.id)
        step = step.parent
    assert len(links) == 6 and links[-1] == broken.id
    observed.flow(links[0], settled=2)
    for position, link_id in enumerate(links[2:], start=3):
        task = answered(observed, f"/api/tasks/{link_id}", "NOT_RUN")
        assert task["name"] == "proj.add"
        assert task["planned"]["role"] == "chain link"
        assert task["planned"]["position"] == position
        assert task["planned"]["blocked_by"]["id"] == links[1]
        assert task["planned"]["summary"] == (
            f"link {position} of a chain; not run because proj.fail failed"
        )
        assert {n["id"] for n in task["flow"]["nodes"]} >= set(links)
        flow = answered(observed, f"/api/flows/{link_id}")
        assert flow["root_id"] == links[0]
        assert next(n for n in flow["nodes"] if n["id"] == link_id)["state"] == "NOT_RUN"
    response = observed.http.get(f"/tasks/{broken.id}")
    assert response.status_code == 200
    soup = BeautifulSoup(response.text, "html.parser")
    summary = soup.select_one(".planned-summary")
    assert summary is not None
    assert summary.get_text() == "Link 6 of a chain; not run because proj.fail failed."
    flow_link = soup.select_one("a.flow-link")
    assert flow_link is not None and flow_link["href"] == f"/flows/{broken.id}"
    assert soup.select_one("#waiting") is None  # nothing left to wait for
    assert observed.http.get(f"/flows/{broken.id}").status_code == 200

    # A chord's callback while its members run, and the chord's group id.
    fanned = chord([slow.s(2.0), slow.s(2.0)], tsum.s()).apply_async()
    # The size counts the members stemtrace has heard of (Celery's messages do not carry
    # it): 1 while the second member's sent event is still on its way, then 2.
    callback = answered(observed, f"/api/tasks/{fanned.id}", "PLANNED",
                        until=lambda found: found["planned"]["size"] == 2)  # fmt: skip
    assert callback["planned"]["role"] == "chord callback"
    assert callback["planned"]["summary"].startswith(
        "callback of a chord of 2 tasks; planned, waiting for proj.slow"
    )
    page = BeautifulSoup(observed.http.get(f"/tasks/{fanned.id}").text, "html.parser")
    assert page.select_one("#waiting") is not None  # opens the task once it is sent
    [header] = [n for n in callback["flow"]["nodes"] if n["kind"] == "chord"]
    group = answered(observed, f"/api/tasks/{header['group_id']}")
    assert group["planned"]["role"] == "chord header" and group["planned"]["size"] == 2
    assert observed.http.get(f"/tasks/{header['group_id']}").status_code == 200
    assert fanned.get(timeout=30) == 4.0
    done = observed.task(fanned.id, "SUCCESS")
    assert "planned" not in done and done["name"] == "proj.tsum"


def _members(observed: Observed, callback_id: str) -> list[dict[str, Any]] | None:
    response = observed.http.get(f"/api/tasks/{callback_id}")
    if response.status_code != 200:
        return None
    group_id = response.json()["group_id"]
    page = observed.http.get(f"/api/groups/{group_id}/members")
    if page.status_code != 200 or page.json()["size"] != 3:
        return None
    members: list[dict[str, Any]] = page.json()["members"]
    return members


def assert_one_story(task: dict[str, Any], waterfall_row: dict[str, Any]) -> None:
    """The timeline, the attempts, the durations and the waterfall tell one story."""
    timed = [p for p in task["phases"] if p["phase"] != "finished"]
    assert all(a["end"] == b["start"] for a, b in pairwise(timed))
    whole = task["finished_at"] - task["sent_at"]
    assert sum(task["durations"].values()) == pytest.approx(whole, rel=0, abs=1e-5)
    running = [p for p in timed if p["phase"] == "running"]
    ran = [a["ran"] for a in task["attempts"]]
    assert ran == pytest.approx([p["duration"] for p in running], abs=1e-6)
    assert sum(ran) == pytest.approx(task["durations"]["running"], abs=1e-5)
    # A retried attempt runs until its retry event, not until its message is re-sent.
    retry_events = [e["ts"] for e in task["events"] if e["kind"] == "retry"]
    assert [p["end"] for p in running[:-1]] == pytest.approx(retry_events, rel=0, abs=1e-6)
    drawn: dict[str, float] = {}
    for segment in waterfall_row["segments"]:
        drawn[segment["phase"]] = (
            drawn.get(segment["phase"], 0.0) + segment["end"] - segment["start"]
        )
    names = {"queued": "queued", "waiting": "waiting in worker", "running": "running",
             "retry": "waiting for retry"}  # fmt: skip
    assert {names[k]: v for k, v in drawn.items()} == pytest.approx(
        task["durations"], rel=0, abs=1e-5
    )


def test_retries_spawned_children_and_a_trace(observed: Observed) -> None:
    app = observed.app
    with stemtrace.trace("order-17"):
        retried = app.tasks["proj.flaky"].delay(3)
        spawner = app.tasks["proj.spawn"].delay(2)
        fanned = group(app.tasks["proj.add"].s(i, 1) for i in range(2)).apply_async()
    assert retried.get(timeout=20) == 3
    children = spawner.get(timeout=20)
    fanned.get(timeout=20)

    task = observed.task(retried.id, "SUCCESS")
    assert task["retries"] == 2 and task["trace_id"] == "order-17"
    assert [a["state"] for a in task["attempts"]] == ["RETRY", "RETRY", "SUCCESS"]
    assert [a["exc_message"] for a in task["attempts"][:2]] == [
        "attempt 1 failed", "attempt 2 failed",
    ]  # fmt: skip
    assert all("Traceback" in a["traceback"] for a in task["attempts"][:2])
    assert task["durations"]["waiting for retry"] > 0 and task["durations"]["running"] >= 0
    assert task["parent_id"] is None
    waterfall = observed.http.get(f"/api/flows/{retried.id}/waterfall").json()
    assert_one_story(task, next(r for r in waterfall["rows"] if r["id"] == retried.id))

    flow = observed.flow(spawner.id, settled=3)
    assert edges(flow, "spawned") == {(spawner.id, child) for child in children}
    assert {c["id"] for c in observed.task(spawner.id, "SUCCESS")["children"]} == set(children)

    def whole_trace() -> dict[str, Any] | None:
        response = observed.http.get("/api/traces/order-17")
        found: dict[str, Any] = response.json()
        return found if response.status_code == 200 and found["count"] == 6 else None

    trace = wait_for(whole_trace, timeout=30)
    # A group's members carry their own root ids, yet are one flow of the trace.
    assert set(trace["roots"]) == {retried.id, spawner.id, fanned.id}
    assert sorted(len(f["tasks"]) for f in trace["flows"]) == [1, 2, 3]
    assert trace["failures"] == 0
    soup = BeautifulSoup(observed.http.get("/traces/order-17").text, "html.parser")
    summary = soup.select_one(".trace-summary")
    assert summary is not None and summary.get_text().startswith("6 tasks in 3 flows.")
    headings = [" ".join(h.get_text().split()) for h in soup.select("section.trace-group h2")]
    assert sum("· 1 task ·" in h for h in headings) == 1  # the retried one; not "1 tasks"
    assert any(h.startswith("✓ success group proj.add x 2") for h in headings), headings

    # A chord of five in a trace of its own: one flow of six tasks, drawn under the trace.
    with stemtrace.trace("order-18"):
        voted = chord([app.tasks["proj.add"].s(i, i) for i in range(5)], app.tasks["proj.tsum"].s())
        voted = voted.apply_async()
    assert voted.get(timeout=30) == 20

    def chord_trace() -> dict[str, Any] | None:
        response = observed.http.get("/api/traces/order-18")
        found: dict[str, Any] = response.json()
        # all six stored, and the chord's links seen (a member's events can come last)
        settled = response.status_code == 200 and found["count"] == 6
        return found if settled and len(found["flows"]) == 1 else None

    trace = wait_for(chord_trace, timeout=30)
    [flow] = trace["flows"]
    assert len(flow["tasks"]) == 6 and flow["id"] != voted.id  # the chord's group id
    graph = observed.http.get("/api/traces/order-18/graph").json()
    [top] = [n for n in graph["nodes"] if n["kind"] == "trace"]
    assert graph["root_id"] == top["id"] and top["size"] == 6
    assert [e for e in graph["edges"] if e["kind"] == "trace"] == [
        {"source": top["id"], "target": flow["root_id"], "kind": "trace"}
    ]
    soup = BeautifulSoup(observed.http.get("/traces/order-18").text, "html.parser")
    summary = soup.select_one(".trace-summary")
    assert summary is not None and summary.get_text().startswith("6 tasks in 1 flow.")
    assert len(soup.select("section.trace-group")) == 1
    assert len(soup.select(".waterfall g.wf-row")) == 6  # one waterfall over the whole trace

    listed = observed.http.get("/api/tasks", params={"trace_id": "order-17", "limit": 100})
    assert len(listed.json()["tasks"]) == 6
    registry = {t["name"]: t for t in observed.http.get("/api/registry").json()["tasks"]}
    assert registry["proj.flaky"]["defined"] and registry["proj.flaky"]["max_retries"] == 3
    assert registry["proj.flaky"]["retry_rate"] == 1.0
    [worker] = observed.http.get("/api/workers").json()["workers"]
    assert worker["state"] == "online" and worker["pool"] == "prefork"
    health = observed.http.get("/api/health").json()
    assert health["status"] == "ok" and health["consumer"]["ingested"] > 0
