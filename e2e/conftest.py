"""Browser tests: Debian's Chromium driven by Playwright against real servers and workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import stemtrace
from stemtrace.capture.capture import Capture
from tests.conftest import redis_available  # noqa: F401 - a fixture
from tests.proj import make_app
from tests.support import (
    ROOT,
    Scenario,
    celery_worker,
    free_port,
    private_db,
    stop_process,
    wait_for,
)

CHROMIUM = os.environ.get("STEMTRACE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: the test command installs it (apt-get)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"],
    }  # fmt: skip


@dataclass
class Server:
    base: str
    process: subprocess.Popen[bytes]


def start_server(command: list[str], env: dict[str, str], health: str, **auth: Any) -> Server:
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            return httpx.get(health, timeout=2, **auth).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=30)
    except BaseException:
        stop_process(process)
        raise
    return Server(health.split("/api/")[0], process)


@pytest.fixture
def scenario(request: pytest.FixtureRequest, redis_available: None) -> Iterator[Scenario]:  # noqa: F811
    found = Scenario(db=private_db(request.node.nodeid))
    yield found
    found.cleanup()


@pytest.fixture
def sender(scenario: Scenario) -> Iterator[tuple[Any, Capture]]:
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=0.05)
    assert capture is not None
    yield app, capture
    capture.publisher.close(1)
    app.close()


@pytest.fixture
def worker(scenario: Scenario) -> Iterator[None]:
    with celery_worker(scenario, pool="prefork"):
        yield


@pytest.fixture
def server(scenario: Scenario, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "stemtrace.cli", "run", "--port", str(port),
               "--broker", scenario.broker, "--stream", scenario.stream,
               "--db", str(tmp_path / "e2e.db"), "--log-level", "warning"]  # fmt: skip
    found = start_server(command, {}, f"http://127.0.0.1:{port}/api/health")
    yield found
    stop_process(found.process)
