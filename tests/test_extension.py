"""``StemtraceExtension`` mounted in a host app: where its routes show in the host's OpenAPI."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from stemtrace.server.extension import StemtraceExtension
from stemtrace.settings import Settings


def host(tmp_path: Path, **options: bool) -> TestClient:
    settings = Settings(db=str(tmp_path / "t.db"), consumer=False)
    ext = StemtraceExtension(settings=settings, **options)
    app = FastAPI(lifespan=ext.lifespan)

    @app.get("/orders")
    def orders() -> list[str]:
        return []

    app.include_router(ext.router, prefix="/stemtrace")
    return TestClient(app)


@pytest.mark.parametrize("include", [True, False])
def test_the_api_joins_the_host_schema_unless_told_not_to(tmp_path: Path, include: bool) -> None:
    with host(tmp_path, include_in_schema=include) as client:
        paths = set(client.get("/openapi.json").json()["paths"])
        assert client.get("/stemtrace/openapi.json").status_code == 404  # as the README says
        assert client.get("/stemtrace/api/health").status_code == 200  # served either way
    ours = {p for p in paths if p.startswith("/stemtrace/")}
    assert "/orders" in paths
    assert ("/stemtrace/api/tasks" in ours) is include
    assert all(p.startswith("/stemtrace/api/") for p in ours)  # never the pages
    if not include:
        assert ours == set()
