"""The ``planned`` table: ids that tasks name in advance, and where to find them.

A chain's links and a chord's callback have their ids before they are sent;
one that never runs has no row of its own. :func:`remember` keeps, per such
id, the first row that named it (the writer calls it for the rows of a batch
that name any); :func:`named_by` finds that row by the table's primary key.
A trigger drops the entries of a deleted row (see migration 10).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from stemtrace.store.dbapi import Executes


def remember(conn: sqlite3.Connection, named: Iterable[tuple[int, str | None, str | None]]) -> None:
    """Record the ids each ``(rowid, chain JSON, chord_id)`` names; the first namer stays."""
    pairs: list[tuple[str, int]] = []
    for rowid, chain, chord_id in named:
        pairs.extend((link_id, rowid) for link_id in link_ids(chain))
        if chord_id:
            pairs.append((chord_id, rowid))
    if pairs:
        conn.executemany("INSERT OR IGNORE INTO planned (id, task_rowid) VALUES (?, ?)", pairs)


def link_ids(chain: str | None) -> list[str]:
    if not chain:
        return []
    try:
        links = json.loads(chain)
    except ValueError:
        return []
    if not isinstance(links, list):
        return []
    return [
        link["id"] for link in links if isinstance(link, dict) and isinstance(link.get("id"), str)
    ]


def named_by(conn: Executes, task_id: str) -> str | None:
    """The id of the first task that named ``task_id`` as a chain link or chord callback.

    Through the ``planned`` table (its primary key), never a scan of ``chain``.
    """
    row = conn.execute(
        "SELECT tasks.id FROM planned JOIN tasks ON tasks.rowid = planned.task_rowid"
        " WHERE planned.id = ?",
        (task_id,),
    ).fetchone()
    return None if row is None else str(row[0])
