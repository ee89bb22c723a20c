"""The pages' links (:mod:`stemtrace.server.links`): the paths Starlette's ``url_for``
gives, with every value quoted, under any mount, for as long as each app lives."""

from __future__ import annotations

import gc
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient

from stemtrace.server import links

pytestmark = pytest.mark.unit

HOSTILE = ["plain", "a b", "a/b", "{task_id}", "{nope}", "%41", "é", "..", "?x=1#y", ""]


def make_app(prefix: str) -> FastAPI:
    router = APIRouter()

    @router.get("/tasks/{task_id}", name="task")
    def task(task_id: str) -> None:  # a route to link to; never called
        raise AssertionError(task_id)

    @router.get("/static/{path:path}", name="static")
    def static(path: str) -> None:
        raise AssertionError(path)

    @router.post("/links", name="links")
    def made(request: Request, body: dict[str, Any]) -> list[str]:
        url = links.url_maker(request)
        return [url(body["route"], query=body.get("query"), **body["path"])]

    app = FastAPI()
    app.include_router(router, prefix=prefix)
    return app


def link(client: TestClient, prefix: str, route: str, **body: Any) -> str:
    response = client.post(f"{prefix}/links", json={"route": route, **body})
    assert response.status_code == 200, response.text
    found: str = response.json()[0]
    return found


@pytest.mark.parametrize("root_path", ["", "/ops", "/a{task_id}b", "/x{nope}"])
def test_each_value_is_quoted_into_its_place_under_any_mount(root_path: str) -> None:
    client = TestClient(make_app("/stemtrace"), root_path=root_path)
    for value in HOSTILE:
        found = link(client, "/stemtrace", "task", path={"task_id": value})
        assert found == f"{root_path}/stemtrace/tasks/{quote(value, safe='')}"
    # a file's path keeps its slashes; everything else in it is quoted
    found = link(client, "/stemtrace", "static", path={"path": "js/a b{c}.js"})
    assert found == f"{root_path}/stemtrace/static/js/a%20b%7Bc%7D.js"


def test_query_values_are_encoded_and_blank_ones_left_out() -> None:
    client = TestClient(make_app(""))
    query = {"q": "a&b=c", "state": ["FAILURE", "RETRY"], "name": "", "worker": None}
    found = link(client, "", "task", path={"task_id": "t"}, query=query)
    assert found == "/tasks/t?q=a%26b%3Dc&state=FAILURE&state=RETRY"
    assert link(client, "", "task", path={"task_id": "t"}, query={"name": ""}) == "/tasks/t"


def test_an_app_made_after_another_died_gets_its_own_paths() -> None:
    """What is kept for an app goes with it: a new app (perhaps at the old one's address)
    under another prefix never gets the old one's paths."""
    made = set()
    for round_no in range(20):
        prefix = f"/p{round_no}"
        app = make_app(prefix)
        made.add(id(app.router))
        client = TestClient(app)
        assert link(client, prefix, "task", path={"task_id": "t"}) == f"{prefix}/tasks/t"
        assert id(app.router) in links._TEMPLATES
        del client, app
        gc.collect()
    assert not made & links._TEMPLATES.keys()  # other tests' apps may live on: not theirs


def test_what_an_app_keeps_is_bounded_whatever_its_mounts() -> None:
    app = make_app("")
    for n in range(links._TEMPLATES_KEPT + 50):
        client = TestClient(app, root_path=f"/m{n}")
        assert link(client, "", "task", path={"task_id": "t"}) == f"/m{n}/tasks/t"
    assert all(len(kept) <= links._TEMPLATES_KEPT for kept in links._TEMPLATES.values())
