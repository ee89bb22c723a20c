"""Fixtures shared by tests/ and e2e/, and the markers every test gets from what it uses.

Markers are worked out, not written by hand, so they cannot drift: ``browser``
for e2e/, ``worker`` where a module starts a real Celery worker (or says so
with ``pytestmark``), ``rabbitmq`` where it names an AMQP URL, ``redis`` where
it names Redis or uses the Redis fixtures, ``postgres`` where it uses a PostgreSQL
fixture (``tests/pg.py``), ``node`` where it runs npm, and
``unit`` for every other test: ``python -m pytest -m unit`` is
the fast subset, which needs no service. There Hypothesis tests run half their
examples (the ``unit`` profile; see ``tests.factories.examples``); the full run
keeps every one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from tests.pg import fixed_clock, pg, pg_migrated, pg_server, pg_url  # noqa: F401 - PostgreSQL fixtures
from tests.site import BACKEND_FIXTURES, backend, db_path, db_target, migrated, module_target, site  # noqa: F401 - fixtures for every test module
from tests.support import REDIS_HOST, REDIS_PORT, Scenario, private_db

settings.register_profile("unit", max_examples=settings.default.max_examples // 2)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("markexpr") == "unit":
        settings.load_profile("unit")


@pytest.fixture(scope="session")
def redis_available() -> None:
    """The shared Redis must answer: the test command starts it; a test never skips."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_HOST}:{REDIS_PORT} is not answering ({exc}); "
            "run the test command (scripts/test), which starts it"
        )
    finally:
        client.close()


@pytest.fixture
def scenario(request: pytest.FixtureRequest, redis_available: None) -> Iterator[Scenario]:
    """A private database number, queue and stream key for one test."""
    found = Scenario(db=private_db(request.node.nodeid))
    yield found
    found.cleanup()


SERVICE_MARKERS = ("browser", "worker", "rabbitmq", "redis", "postgres", "node")
_sources: dict[Path, str] = {}


def markers_for(item: pytest.Item) -> list[str]:
    path = Path(str(item.path))
    source = _sources.get(path)
    if source is None:
        source = _sources[path] = path.read_text()
    found = []
    if path.parent.name == "e2e":
        found.append("browser")
    if "celery_worker(" in source:
        found.append("worker")
    if "amqp://" in source:
        found.append("rabbitmq")
    if "npm" in source:
        found.append("node")
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & {"redis_available", "scenario"} or "redis://" in source:
        found.append("redis")
    if fixtures & {"pg_server", "pg_url", "pg_migrated"} or backend_of(item) == "postgresql":
        found.append("postgres")
    return found or ["unit"]


def backend_of(item: pytest.Item) -> str | None:
    """The store backend a test runs on (the parameter of ``db_target`` or
    ``module_target``), if it takes one."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    found = {callspec.params[name] for name in BACKEND_FIXTURES if name in callspec.params}
    if len(found) > 1:
        return "mixed"  # two stores of different backends: not run (see below)
    return found.pop() if found else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a test of SQLite's own file (db_path) runs on SQLite only; a test with a store of
    # its own and a module's runs where both are of one backend
    left_out = {
        item
        for item in items
        if ("db_path" in getattr(item, "fixturenames", ()) and backend_of(item) != "sqlite")
        or backend_of(item) == "mixed"
    }
    if left_out:
        config.hook.pytest_deselected(items=list(left_out))
        items[:] = [item for item in items if item not in left_out]
    for item in items:
        declared = {m.name for m in item.iter_markers()} & set(SERVICE_MARKERS)
        found = markers_for(item)
        for name in found:
            if not (name == "unit" and declared):
                item.add_marker(name)
        if "rabbitmq" in found or "rabbitmq" in declared:
            # one RabbitMQ vhost for all: Celery's event exchange there is shared, so
            # under pytest-xdist (--dist loadgroup) these run one after another
            item.add_marker(pytest.mark.xdist_group("rabbitmq"))
