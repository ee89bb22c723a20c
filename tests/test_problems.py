"""Problems found from the tasks in flight: each kind from a store built to show it,
the API and the page agreeing, thresholds from settings, and the task page's why."""

from __future__ import annotations

import time
from typing import Any

import pytest

from stemtrace.core.thresholds import Thresholds
from stemtrace.model import problems
from stemtrace.settings import SettingError, Settings
from tests.factories import W1, W2, Task, lifecycle, registry_entry, worker_event
from tests.site import Site, page

pytestmark = pytest.mark.usefixtures("db_target")


def online(worker: str, ts: float, queues: list[str], **fields: Any) -> Any:
    return worker_event(
        "worker_online", worker, ts, sw_ver="5.7.0", pool="prefork", concurrency=1,
        queues=queues, freq=2.0, **fields,
    )  # fmt: skip


def beat(worker: str, ts: float) -> Any:
    return worker_event("worker_heartbeat", worker, ts, freq=2.0, active=1, processed=0)


def scene(now: float) -> list[Any]:
    """One task of each kind of problem, and tasks that are fine."""
    events = [online(W1, now - 600, ["celery"], tasks=[registry_entry("p.limited",
              soft_time_limit=30, time_limit=600)]), beat(W1, now - 1)]  # fmt: skip
    events += [online(W2, now - 600, ["celery"]), beat(W2, now - 300)]  # silent since: lost
    fine = Task("fine-wait", "p.quick")
    events += [fine.sent(now - 5)]
    waiting = Task("long-wait", "p.quick")
    events += [waiting.sent(now - 400)]
    orphan = Task("no-consumer", "p.report")
    events += [orphan.sent(now - 30, queue="reports")]
    long = Task("long-run", "p.limited")
    events += [long.sent(now - 100), long.received(now - 99, W1), long.started(now - 98, W1)]
    held = Task("held", "p.quick")
    events += [held.sent(now - 90), held.received(now - 90, W1)]
    dead = Task("died", "p.quick")
    events += [dead.sent(now - 500), dead.received(now - 499, W2), dead.started(now - 498, W2)]
    later = Task("later", "p.quick")
    eta = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 600))
    events += [later.sent(now - 10, eta=eta), later.received(now - 9, W1, eta=eta)]
    overdue = Task("overdue", "p.quick")
    due = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 120))
    events += [overdue.sent(now - 200, eta=due), overdue.received(now - 199, W1, eta=due)]
    retried = Task("retried", "p.flaky")
    events += [retried.sent(now - 50, retries=5)]
    return events


def test_each_kind_is_found_with_its_reason(site: Site) -> None:
    now = time.time()
    client = site(scene(now))
    body = client.get("/api/problems").json()
    by_task = {p["task_id"]: p for p in body["problems"] if p["task_id"]}
    assert by_task["long-wait"]["kind"] == "waiting"
    assert "waiting in celery" in by_task["long-wait"]["reason"]
    assert "fine-wait" not in by_task
    assert by_task["long-run"]["kind"] == "late"
    assert "soft time limit" in by_task["long-run"]["reason"]
    assert by_task["held"]["kind"] == "held"
    assert W1 in by_task["held"]["reason"] and "p.limited" in by_task["held"]["reason"]
    assert by_task["died"]["kind"] == "lost"
    assert W2 in by_task["died"]["reason"]
    assert "later" not in by_task  # scheduled, not due yet
    assert by_task["overdue"]["kind"] == "overdue"
    assert any(p["kind"] == "retrying" and p["task_id"] == "retried" for p in body["problems"])
    queues = [p for p in body["problems"] if p["kind"] == "unconsumed"]
    assert [p["queue"] for p in queues] == ["reports"]
    assert "reports" in queues[0]["reason"]
    assert body["counts"] == {k: sum(p["kind"] == k for p in body["problems"])
                              for k in problems.KINDS}  # fmt: skip
    assert body["total"] == len(body["problems"])
    assert [problems.KINDS.index(p["kind"]) for p in body["problems"]] == sorted(
        problems.KINDS.index(p["kind"]) for p in body["problems"]
    )


def test_the_page_lists_what_the_api_says(site: Site) -> None:
    now = time.time()
    client = site(scene(now))
    body = client.get("/api/problems").json()
    soup = page(client, "/problems")
    rows = soup.select("table.problems tbody tr")
    assert len(rows) == body["total"]
    for kind, count in body["counts"].items():
        if count:
            assert len(soup.select(f"tr.problem-{kind}")) == count
    only = page(client, "/problems", kind="lost")
    assert [r.get("class") for r in only.select("table.problems tbody tr")] == [["problem-lost"]]
    assert client.get("/problems", params={"kind": "nope"}).status_code == 422
    assert client.get("/api/problems", params={"kind": "nope"}).status_code == 422


def test_problems_clear_when_tasks_move_on(site: Site) -> None:
    now = time.time()
    events = scene(now)
    waiting, held = Task("long-wait", "p.quick"), Task("held", "p.quick")
    events += lifecycle("long-wait", "p.quick", now - 3, runtime=1.0)
    events += [held.started(now - 2, W1), held.ended("succeeded", now - 1, W1)]
    assert waiting.id
    client = site(events)
    ids = {p["task_id"] for p in client.get("/api/problems").json()["problems"]}
    assert "long-wait" not in ids and "held" not in ids


def test_a_hostile_name_is_escaped(site: Site) -> None:
    now = time.time()
    evil = Task("evil", "<script>alert(1)</script>")
    client = site([online(W1, now - 60, ["celery"]), beat(W1, now), evil.sent(now - 400)])
    response = client.get("/problems")
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_thresholds_come_from_settings(site: Site) -> None:
    now = time.time()
    client = site(scene(now), problem_wait_seconds=1000, problem_held_seconds=1000)
    body = client.get("/api/problems").json()
    assert body["thresholds"]["wait_seconds"] == 1000
    kinds = {p["kind"] for p in body["problems"]}
    assert "waiting" not in kinds and "held" not in kinds


@pytest.mark.parametrize(
    ("name", "value", "flag"),
    [("problem_wait_factor", 0.5, "problem_wait_factor"),
     ("problem_retries", -1, "problem_retries"),
     ("worker_timeout_seconds", 0, "worker_timeout_seconds")],
)  # fmt: skip
def test_bad_thresholds_are_refused_by_name(name: str, value: float, flag: str) -> None:
    with pytest.raises(SettingError, match=flag):
        Settings(**{name: value})
    variable = f"STEMTRACE_{name.upper()}"
    with pytest.raises(SettingError, match=variable):
        Settings.from_env({variable: str(value)})


def in_flight(**fields: Any) -> dict[str, Any]:
    """A row as the store reads the tasks in flight: every column, ``None`` where not given."""
    from stemtrace.store.inflight import COLUMNS

    return {**dict.fromkeys(COLUMNS), **fields}


def test_a_late_task_against_its_usual_run_time() -> None:
    now = 10_000.0
    task = in_flight(id="t", name="n", state="STARTED", worker="w", started_at=now - 100)
    workers = [{"hostname": "w", "state": "online", "queues": ["q"]}]
    usuals = problems.Usuals(run_p99={"n": 10.0})
    found = problems.find([task], workers, {}, usuals, Thresholds(), now)
    assert [p["kind"] for p in found] == ["late"]
    assert "p99" in found[0]["reason"]
    calm = problems.find([task], workers, {}, problems.Usuals(run_p99={"n": 50.0}),
                         Thresholds(), now)  # fmt: skip
    assert calm == []


def test_a_name_failing_far_above_its_usual() -> None:
    usuals = problems.Usuals(failures={"n": (8, 10, 1, 100), "calm": (8, 10, 70, 100)})
    found = problems.find([], [], {}, usuals, Thresholds(), 10_000.0)
    assert [(p["kind"], p["name"]) for p in found] == [("retrying", "n")]


def test_a_queue_with_broker_messages_and_no_consumer() -> None:
    workers = [{"hostname": "w", "state": "online", "queues": ["celery"]}]
    depths = {"celery": {"messages": 3}, "orphans": {"messages": 7}, "empty": {"messages": 0},
              "seen": {"messages": 2, "consumers": 1}}  # fmt: skip
    found = problems.find([], workers, depths, problems.Usuals(), Thresholds(), 10_000.0)
    assert [p["queue"] for p in found] == ["orphans"]
    assert "7 messages" in found[0]["reason"]
    unknown = [{"hostname": "w", "state": "online", "queues": []}]
    assert problems.find([], unknown, depths, problems.Usuals(), Thresholds(), 1.0) == []


def test_the_task_page_says_why_it_waits(site: Site) -> None:
    now = time.time()
    events = scene(now)
    for n in range(25):  # a usual for p.quick: 25 runs of 1 s after a 0.5 s wait
        events += lifecycle(f"usual-{n}", "p.quick", now - 3000 + n, runtime=1.0)
    client = site(events)
    orphan = page(client, "/tasks/no-consumer")
    why = orphan.select_one("section.why")
    assert why is not None
    assert "In queue reports" in why.get_text(" ", strip=True)
    assert "No online worker consumes this queue" in why.get_text(" ", strip=True)
    later = page(client, "/tasks/later").select_one("section.why li.due")
    assert later is not None and "Due at" in later.get_text() and ", in " in later.get_text()
    overdue = page(client, "/tasks/overdue").select_one("section.why li.due")
    assert overdue is not None and "Overdue by 2 min" in overdue.get_text()
    died = page(client, "/tasks/died")
    lost = died.select_one("section.why li.lost")
    assert lost is not None and W2 in lost.get_text()
    detail = client.get("/api/tasks/died").json()
    assert detail["why"]["lost"]["worker"] == W2
    assert [p["kind"] for p in detail["why"]["problems"]] == ["lost"]
    waiting = client.get("/api/tasks/long-wait").json()["why"]
    assert waiting["queue"]["name"] == "celery"
    assert waiting["queue"]["ahead"] == 0  # nothing sent to celery before it waits still
    usual = page(client, "/tasks/long-wait").select_one("table.usual")
    assert usual is not None
    cells = [[td.get_text(" ", strip=True) for td in tr.find_all("td")]
             for tr in usual.select("tbody tr")]  # fmt: skip
    assert cells[0][0].endswith("(so far)")
    assert cells[1][1] != "—"  # the name's usual run time


def test_a_revoked_task_says_why_in_its_timeline(site: Site) -> None:
    now = time.time()
    early = Task("early", "p.quick")
    killed = Task("killed", "p.quick")
    events = [early.sent(now - 10), early.ended("revoked", now - 9, W1, terminated=False,
                                                 expired=False)]  # fmt: skip
    events += [killed.sent(now - 10), killed.received(now - 9, W1), killed.started(now - 8, W1),
               killed.ended("revoked", now - 7, W1, terminated=True, signum=15)]  # fmt: skip
    client = site(events)
    for task_id, words in (("early", "revoked (revoked before it ran)"),
                           ("killed", "revoked (terminated (signal 15))")):  # fmt: skip
        rows = page(client, f"/tasks/{task_id}").select("table.phases tbody tr")
        assert rows[-1].find("td").get_text(" ", strip=True) == words
        phases = client.get(f"/api/tasks/{task_id}").json()["phases"]
        assert phases[-1]["outcome"] == "revoked"


def test_a_lost_task_is_marked_in_its_flow_and_export(site: Site) -> None:
    now = time.time()
    root = Task("root", "p.parent")
    child = Task("died-child", "p.quick", parent_id="root", root_id="root")
    events = [online(W2, now - 600, ["celery"]), beat(W2, now - 300)]
    events += lifecycle("root", "p.parent", now - 560, runtime=1.0)
    events += [child.sent(now - 500), child.received(now - 499, W2),
               child.started(now - 498, W2)]  # fmt: skip
    assert root.id
    client = site(events)
    flow = client.get("/api/flows/root").json()
    nodes = {n["id"]: n for n in flow["nodes"]}
    assert nodes["died-child"]["state"] == "STARTED"  # a derived mark, not a state
    assert W2 in nodes["died-child"]["lost"]
    assert nodes["root"]["lost"] is None
    assert "lost with its worker" in client.get("/api/flows/root/graph.dot").text
    steps = page(client, "/flows/root").select("ul.tree strong.lost")
    assert len(steps) == 1


def test_a_retry_waits_for_its_latest_eta_not_its_first(site: Site) -> None:
    now = time.time()
    task = Task("twice", "p.flaky")

    def at(ts: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))

    first, second = at(now - 300), at(now + 300)
    events = [task.sent(now - 400), task.received(now - 399, W1), task.started(now - 398, W1),
              task.ended("retry", now - 397, W1, retries=0),
              task.sent(now - 397, retries=1, eta=first), task.received(now - 396, W1, retries=1,
              eta=first), task.started(now - 300, W1, retries=1),
              task.ended("retry", now - 299, W1, retries=1),
              task.sent(now - 299, retries=2, eta=second)]  # fmt: skip
    for order in (events, list(reversed(events))):
        client = site(order)
        detail = client.get("/api/tasks/twice").json()
        assert detail["eta"] == second
        assert detail["why"]["due"]["in"] > 0
        assert "twice" not in {p["task_id"] for p in client.get("/api/problems").json()["problems"]
                               if p["kind"] == "overdue"}  # fmt: skip
