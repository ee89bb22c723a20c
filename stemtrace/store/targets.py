"""What ``--db`` names: a SQLite file (the default) or a PostgreSQL database.

* a plain path (``stemtrace.db``, ``/data/st.db``, ``:memory:``), ``sqlite:PATH``,
  ``sqlite:///ABSOLUTE/PATH`` or ``sqlite:`` alone (the default file): SQLite;
* ``postgresql://user@host:port/dbname`` or ``postgres://...``: PostgreSQL,
  through psycopg 3 (the optional extra ``stemtrace[postgres]``).

Any other ``scheme://`` is refused, so that a URL meant for a database
stemtrace does not know never becomes a directory named after its scheme.
A colon in a plain file name (``runs:2024.db``) stays a file name.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DB = "stemtrace.db"

POSTGRES_SCHEMES = ("postgresql", "postgres")
INSTALL_POSTGRES = "pip install 'stemtrace[postgres]'"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class BadTarget(ValueError):
    """A ``--db`` stemtrace cannot open; the message says why, after the setting's name."""


@dataclass(frozen=True)
class Target:
    """A store's kind and where it is: a file path, or a PostgreSQL connection URL."""

    kind: Literal["sqlite", "postgresql"]
    location: str

    @property
    def shown(self) -> str:
        """Where the store is, fit to print and log: a URL without its password."""
        return redacted(self.location) if self.kind == "postgresql" else self.location


def parse_target(db: str) -> Target:
    """What ``db`` names (raises :class:`BadTarget`, worded to follow ``db``)."""
    match = _SCHEME.match(db)
    if match is None:
        return Target("sqlite", db)
    scheme = match[1].lower()
    rest = db[match.end() :]
    if scheme == "sqlite":
        return Target("sqlite", _sqlite_path(rest))
    if scheme in POSTGRES_SCHEMES:
        return Target("postgresql", _postgres_url(db, rest))
    if rest.startswith("//"):
        raise BadTarget(
            f"names a {scheme}:// database, which stemtrace does not know: use a file path"
            " (SQLite) or postgresql://user@host:port/dbname"
        )
    return Target("sqlite", db)  # a file name with a colon in it


def _sqlite_path(rest: str) -> str:
    if not rest:
        return DEFAULT_DB
    if rest.startswith("//"):
        path = rest[2:]
        if not path.startswith("/"):
            raise BadTarget(
                f"names a host in a SQLite URL (sqlite://{path}): a SQLite file is local,"
                " use sqlite:///absolute/path or sqlite:relative/path"
            )
        return path
    return rest


def _postgres_url(db: str, rest: str) -> str:
    if not rest.startswith("//"):
        raise BadTarget(f"is not a URL such as postgresql://user@host:5432/dbname: {db!r}")
    parts = urlsplit(db)
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise BadTarget(f"has a port that is not a number: {redacted(db)!r}") from None
    if not parts.path.strip("/"):
        raise BadTarget(
            f"names no database: postgresql://user@host:5432/dbname, not {redacted(db)!r}"
        )
    return db


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def postgres_driver_missing() -> str | None:
    """Why PostgreSQL cannot be used in this environment (its driver is not installed), or None.

    Looks the packages up without importing them: the settings check this.
    """
    for module in ("psycopg", "psycopg_pool"):
        if importlib.util.find_spec(module) is None:
            return f"selects PostgreSQL, whose driver {module} is not installed: {INSTALL_POSTGRES}"
    return None
