"""The standalone app's edges: the schema behind auth, odd static paths, errors with headers.

The app's routes run once per backend (``db_target``: the auth before the schema,
a store read that fails); the static files are served without the store, on SQLite only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stemtrace.server.app import create_app
from stemtrace.server.security import CSP
from stemtrace.settings import Settings
from stemtrace.store import fleet


def client_for(db: str | Path, **settings: Any) -> TestClient:
    app = create_app(Settings(db=str(db), consumer=False, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def locked(db_target: str) -> Iterator[TestClient]:
    with client_for(db_target, auth_user="ops", auth_password="pa:ss") as client:
        yield client


def test_the_openapi_schema_is_behind_the_auth(locked: TestClient) -> None:
    refused = locked.get("/openapi.json")
    assert refused.status_code == 401
    assert refused.headers["content-security-policy"] == CSP
    allowed = locked.get("/openapi.json", auth=("ops", "pa:ss"))
    assert allowed.status_code == 200
    assert "/api/tasks" in allowed.json()["paths"]
    for docs in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert locked.get(docs, auth=("ops", "pa:ss")).status_code == 404


def test_without_auth_the_schema_is_open(db_target: str) -> None:
    with client_for(db_target) as client:
        assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("path", ["a%00.css", "%01x.js", "x" * 300, "vendor/%7f.js"])
def test_a_malformed_static_path_is_a_400_with_the_headers(tmp_path: Path, path: str) -> None:
    with client_for(tmp_path / "s.db") as client:
        response = client.get(f"/static/{path}")
    assert response.status_code == 400
    assert response.headers["content-security-policy"] == CSP


def test_an_unexpected_error_still_carries_the_security_headers(
    db_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fleet, "workers", broken)  # every backend's workers() reads through it
    with client_for(db_target) as client:
        response = client.get("/workers")
    assert response.status_code == 500
    assert response.headers["content-security-policy"] == CSP
    assert "a bug" not in response.text
