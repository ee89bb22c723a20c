from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
import redis

from tests.support import REDIS_HOST, REDIS_PORT, Scenario


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
    db = 1 + zlib.crc32(request.node.nodeid.encode()) % 15
    found = Scenario(db=db)
    yield found
    found.cleanup()
