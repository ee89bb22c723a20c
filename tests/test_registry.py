"""The task registry a worker announces: the retry policy Celery applies, secrets scrubbed.

Tasks are defined on a real Celery app (memory broker, nothing sent); the
policy is checked against what Celery's own autoretry passes to ``retry()``,
and the ``worker_online`` event goes through the store to the registry page.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from bs4 import BeautifulSoup
from celery import Celery
from celery.exceptions import Retry
from starlette.testclient import TestClient

import stemtrace
from stemtrace.capture.payload import Shaper
from stemtrace.capture.registry import describe_tasks
from stemtrace.core.events import decode_frame
from stemtrace.server import render
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store.ingest import Ingestor
from stemtrace.store.schema import Store
from stemtrace.transports.memory import stream_for


@pytest.fixture
def app() -> Celery:
    return Celery("reg", broker="memory://", set_as_current=False)


def entry(app: Celery, name: str, shaper: Shaper | None = None) -> dict[str, Any]:
    return {t["name"]: t for t in describe_tasks(app, shaper or Shaper())}[name]


def celery_retries(task: Any, attempts: int) -> list[dict[str, Any]]:
    """The arguments Celery's autoretry hands to ``retry()`` on each of ``attempts`` failures."""
    calls: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> Retry:
        calls.append(kwargs)
        return Retry()

    for retries in range(attempts):
        task.push_request(retries=retries)
        try:
            with mock.patch.object(task, "retry", record), pytest.raises(Retry):
                task.run()
        finally:
            task.pop_request()
    return calls


def test_retry_kwargs_set_the_limit_and_the_countdown(app: Celery) -> None:
    @app.task(shared=False, name="reg.flaky", bind=True, autoretry_for=(ConnectionError,),
              retry_kwargs={"max_retries": 4, "countdown": 1})  # fmt: skip
    def flaky(self: Any) -> None:
        raise ConnectionError("down")

    policy = entry(app, "reg.flaky")["retry_policy"]
    [call] = celery_retries(flaky, 1)
    assert (policy["max_retries"], policy["countdown"]) == (call["max_retries"], call["countdown"])
    assert render.retry_policy(policy) == ("max 4, every 1 s", "auto on ConnectionError")


def test_backoff_replaces_the_countdown(app: Celery) -> None:
    @app.task(shared=False, name="reg.backoff", autoretry_for=(KeyError, ValueError),
              dont_autoretry_for=(UnicodeError,), retry_kwargs={"countdown": 99},
              retry_backoff=3, retry_backoff_max=10, retry_jitter=False)  # fmt: skip
    def backoff() -> None:
        raise KeyError("x")

    policy = entry(app, "reg.backoff")["retry_policy"]
    assert [c["countdown"] for c in celery_retries(backoff, 3)] == [3, 6, 10]
    assert policy == {
        "max_retries": 3, "countdown": None, "backoff": 3, "backoff_max": 10, "jitter": False,
        "autoretry_for": ["KeyError", "ValueError"], "dont_autoretry_for": ["UnicodeError"],
    }  # fmt: skip
    assert render.retry_policy(policy) == (
        "max 3, backoff 3 s, 6 s, 10 s, …, at most 10 s",
        "auto on KeyError, ValueError, not on UnicodeError",
    )


def test_backoff_true_is_a_factor_of_one_with_jitter_by_default(app: Celery) -> None:
    @app.task(shared=False, name="reg.jitter", autoretry_for=(KeyError,), retry_backoff=True,
              max_retries=None)  # fmt: skip
    def jitter() -> None:
        raise KeyError("x")

    policy = entry(app, "reg.jitter")["retry_policy"]
    assert (policy["backoff"], policy["backoff_max"], policy["jitter"]) == (1, 600, True)
    # full jitter: each countdown drawn between 0 and factor * 2 ** retries
    assert all(0 <= c["countdown"] <= 2**n for n, c in enumerate(celery_retries(jitter, 3)))
    assert (
        render.retry_policy(policy)[0]
        == "no limit, backoff 1 s, 2 s, 4 s, …, at most 600 s, jittered"
    )


def test_without_autoretry_retry_kwargs_do_not_apply(app: Celery) -> None:
    @app.task(shared=False, name="reg.manual", retry_kwargs={"max_retries": 9}, max_retries=2,
              default_retry_delay=0.5)  # fmt: skip
    def manual() -> None:
        pass

    policy = entry(app, "reg.manual")["retry_policy"]
    assert (policy["max_retries"], policy["countdown"], policy["autoretry_for"]) == (2, 0.5, [])
    assert render.retry_policy(policy) == ("max 2, every 0.5 s", "")


def test_an_odd_retry_kwargs_does_not_lose_the_entry(app: Celery) -> None:
    @app.task(shared=False, name="reg.odd", autoretry_for=(KeyError,), retry_kwargs=["countdown"])
    def odd() -> None:
        pass

    policy = entry(app, "reg.odd")["retry_policy"]
    assert (policy["max_retries"], policy["countdown"]) == (3, 180)


def test_defaults_of_secret_parameters_are_scrubbed(app: Celery) -> None:
    @app.task(shared=False, name="reg.login", bind=True)
    def login(self: Any, n: int, password: str = "hunter2", iban: str = "DE89",
              url: str = "redis://u:s3cret@host/0", retries: int = 3) -> None:  # fmt: skip
        pass

    signature = entry(app, "reg.login")["signature"]
    assert signature == (
        "(n: int, password: str = <scrubbed>, iban: str = 'DE89',"
        " url: str = 'redis://u:***@host/0', retries: int = 3) -> None"
    )
    mine = entry(app, "reg.login", Shaper(secret_keys=["iban"]))["signature"]
    assert "iban: str = <scrubbed>" in mine and "hunter2" not in mine
    assert "password: str = 'hunter2'" in entry(app, "reg.login", Shaper(scrub=False))["signature"]
    hooked = Shaper(scrubber=lambda field, value: f"{field}: {value}".replace("DE89", "x"))
    assert entry(app, "reg.login", hooked)["signature"].startswith("signature: (n: int")


@pytest.fixture
def announced(app: Celery) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """``announced()``: the events ``init(app)`` publishes when a worker comes online."""
    stream = f"registry-{uuid.uuid4().hex[:8]}"
    capture = stemtrace.init(app, transport_url="memory://registry", stream=stream)
    assert capture is not None

    def events() -> list[dict[str, Any]]:
        consumer = SimpleNamespace(hostname="celery@reg", pool=None, task_consumer=None)
        capture.on_worker_ready(consumer)
        assert capture.publisher.flush(5)
        found: list[dict[str, Any]] = []
        for _, frame in stream_for("memory://registry", stream).read_after(0, 1000):
            found.extend(decode_frame(frame).events)
        return found

    yield events
    capture.publisher.close(1)


def test_the_event_and_the_registry_page_keep_the_secret_out(
    app: Celery, announced: Callable[[], list[dict[str, Any]]], tmp_path: Path
) -> None:
    @app.task(shared=False, name="reg.flaky", bind=True, autoretry_for=(ConnectionError,),
              retry_kwargs={"max_retries": 4, "countdown": 1})  # fmt: skip
    def flaky(self: Any, n: int, password: str = "hunter2") -> None:
        raise ConnectionError("down")

    events = announced()
    [online] = [e for e in events if e["kind"] == "worker_online"]
    assert "hunter2" not in json.dumps(online)
    store = Store(tmp_path / "t.db")
    try:
        Ingestor(store.writer()).ingest(events)
    finally:
        store.close()
    app_ = create_app(Settings(db=str(tmp_path / "t.db"), consumer=False))
    with TestClient(app_) as client:
        response = client.get("/registry")
        api = client.get("/api/registry").json()
    assert response.status_code == 200 and "hunter2" not in response.text
    soup = BeautifulSoup(response.text, "html.parser")
    [row] = soup.select("table.registry tbody tr")
    cells = row.find_all("td", recursive=False)
    assert cells[1].get_text() == "(n: int, password: str = <scrubbed>) -> None"
    assert cells[3].find(string=True, recursive=False) == "max 4, every 1 s"
    assert " ".join(cells[3].div.get_text().split()) == "auto on ConnectionError"
    [task] = api["tasks"]
    assert task["retry_policy"]["max_retries"] == 4 and task["retry_policy"]["countdown"] == 1
