"""PostgreSQL for the tests: the machine's server, and a database of its own per test.

The test command (``scripts/test``) starts a server on 127.0.0.1:5432 that
trusts the ``postgres`` user; a test that needs it fails (never skips) when
nothing answers there. Each test creates a database with a unique name and
drops it afterwards, so tests cannot see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_ADMIN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def pg_url_of(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The shared server's maintenance database URL; it must answer."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} is not answering ({exc}); "
            "run the test command (scripts/test), which starts it"
        )
    return PG_ADMIN


def create_database(admin: str) -> str:
    name = f"stemtrace_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """This test's own empty database on the shared server, dropped afterwards."""
    name = create_database(pg_server)
    try:
        yield pg_url_of(name)
    finally:
        drop_database(pg_server, name)
