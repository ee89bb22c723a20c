"""The text index behind ``q``: trigrams of each settled task, filled a slice at a time.

``q`` finds tasks whose name, id, args, kwargs or exception contains a text
(``LIKE '%text%'``, case-insensitive for ASCII). A scan of the task rows
answers that quickly for a common text, whose first page is near the newest
rows, and slowly for a rare one. The FTS5 table ``task_search`` (see
``m006_task_search`` in :mod:`stemtrace.store.schema`) indexes the trigrams of
that text, so a rare text narrows down to a few candidate rows; the same
``LIKE`` then runs on just those, which keeps the answer exactly the scan's.

The :class:`SearchIndexer` runs in the consumer's writer thread between
batches, only when the consumer has caught up with its stream, so that
ingestion goes first in a burst and indexing catches up afterwards. It walks
the tasks in rowid order past ``task_search_state.position``. A task is
indexed once it is *settled*: in a terminal state and not written for
``settle`` seconds (the sent event of a fast task can arrive after its
success, and Celery's events before stemtrace's richer ones), or first seen
more than ``max_wait`` seconds ago (a long or lost task, indexed as it is).
Unsettled tasks are passed over into ``task_search_pending`` and looked at
again every ``recheck`` seconds; a task indexed by age stays there until it
settles for good and is indexed again with its final text.

A search therefore runs the ``LIKE`` on the candidates of the index, the
pending tasks and the tasks past the position (not indexed yet). Up to
:data:`MOST_CANDIDATES` candidates are sorted at once; more are taken a span of
rowids at a time, newest first, until the page cannot change
(:class:`Narrowed`), so a text found in thousands of old tasks is quick too.
When the index leaves too much to check (a text in most tasks, whose newest
matches a scan finds at once, or a backlog not indexed yet) it scans as before.

Text that changes after a task was indexed (its sent event or its failure
arriving late) is noticed by the ingestor, which calls :func:`touched` in its
write transaction: such a task goes back among the pending ones, is checked
directly by every search meanwhile, and is indexed again once it settles. (A
trigger on ``tasks`` would have done the same, but any trigger there slowed
ingestion by about 30%: SQLite opens a statement journal per upsert.)
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stemtrace.core import states

TEXT_COLUMNS = ("name", "id", "args", "kwargs", "exc_type", "exc_message")
"""What ``q`` searches; ``task_search`` has the same columns."""

MIN_LENGTH = 3
"""A text shorter than a trigram has no trigram to look up: it scans."""

MOST_CANDIDATES = 1000
"""Up to this many candidates are checked and sorted at once; more are walked
span by span, newest first (:meth:`Narrowed.rounds`)."""

FIRST_ROUND = 500
"""Candidates checked in the first round of a walk, at least."""

DENSE = 20
"""A text whose newest candidates are more than one in ``DENSE`` of the newest
tasks is common: the newest-first scan finds a page in a few hundred rows."""

MOST_MATCHES = 100_000
MOST_WALKED = 10_000
"""Past this many candidates, or this many walked without a full page, a text is
common enough that the newest-first scan finds a page sooner."""

SPAN_BITS = 10
"""Rowids ``n << SPAN_BITS`` to ``(n + 1) << SPAN_BITS`` make span ``n``."""

MOST_UNINDEXED = 20_000
"""Past this many tasks to check without the index (pending or past the
position, as when the indexer is catching up) a search scans instead."""

PROBED = 12
PROBE = 256
ANDED = 4

_TERMINAL = ", ".join(f"'{state}'" for state in sorted(states.TERMINAL))
_COLUMNS = ", ".join(TEXT_COLUMNS)
_SPANS = """
INSERT INTO task_search_spans (span, max_seen)
    SELECT rowid >> :bits, MAX(seen_at) FROM tasks WHERE rowid > :after AND rowid <= :last
    GROUP BY rowid >> :bits
ON CONFLICT (span) DO UPDATE SET max_seen = MAX(max_seen, excluded.max_seen)
"""
_INSERT_DOCUMENTS = (
    f"INSERT INTO task_search (rowid, {_COLUMNS})"
    f" SELECT rowid, {_COLUMNS} FROM tasks WHERE rowid IN (SELECT value FROM json_each(?))"
)


@dataclass
class SearchIndexer:
    """Indexes the text of settled tasks, at most ``slice_size`` tasks per :meth:`step`.

    Its position is kept in the database and read inside the write transaction,
    so a restarted indexer resumes where it stopped, and two indexers on one
    store would take turns rather than index a task twice.
    """

    settle: float = 10.0
    """Seconds a task in a terminal state must go unwritten before it is indexed."""
    max_wait: float = 300.0
    """Seconds after it was first seen that a task is indexed whatever its state."""
    slice_size: int = 2000
    recheck: float = 5.0
    """Seconds between looks at the pending tasks."""
    indexed: int = 0
    """Documents written by this indexer."""
    status: dict[str, Any] = field(default_factory=dict)
    _next_recheck: float = 0.0

    def step(self, conn: sqlite3.Connection, now: float | None = None) -> int:
        """Index or set aside the next tasks; return how many it dealt with.

        ``slice_size`` means there is more to do.
        """
        now = time.time() if now is None else now
        quiet = now - self.settle
        old = now - self.max_wait
        settled = f"(state IN ({_TERMINAL}) AND updated_at <= :quiet)"
        done = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if now >= self._next_recheck:
                found = conn.execute(
                    f"""SELECT p.task_rowid, p.indexed, state IN ({_TERMINAL})
                        FROM task_search_pending p JOIN tasks t ON t.rowid = p.task_rowid
                        WHERE {settled} OR (p.indexed = 0 AND seen_at <= :old)
                        ORDER BY p.task_rowid LIMIT :most""",
                    {"quiet": quiet, "old": old, "most": self.slice_size},
                ).fetchall()
                self._settle_pending(conn, found)
                done += len(found)
                if len(found) < self.slice_size:
                    self._next_recheck = now + self.recheck
            position = int(conn.execute("SELECT position FROM task_search_state").fetchone()[0])
            if done < self.slice_size:
                rows = conn.execute(
                    f"""SELECT rowid, {settled} OR seen_at <= :old, state IN ({_TERMINAL})
                        FROM tasks WHERE rowid > :position ORDER BY rowid LIMIT :most""",
                    {"quiet": quiet, "old": old, "position": position,
                     "most": self.slice_size - done},
                ).fetchall()  # fmt: skip
                if rows:
                    self._index_new(conn, rows)
                    bounds = {"bits": SPAN_BITS, "after": position, "last": rows[-1][0]}
                    conn.execute(_SPANS, bounds)
                    position = rows[-1][0]
                    conn.execute("UPDATE task_search_state SET position = ?", (position,))
                    done += len(rows)
            top = conn.execute("SELECT MAX(rowid) FROM tasks").fetchone()[0] or 0
            pending = conn.execute("SELECT COUNT(*) FROM task_search_pending").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.status = {
            "position": position,
            "indexed": self.indexed,
            "not_indexed": max(int(top) - position, 0),
            "pending": int(pending),
        }
        return done

    def _settle_pending(self, conn: sqlite3.Connection, rows: list[tuple[int, int, int]]) -> None:
        """Index pending tasks that settled; those indexed by age only keep waiting."""
        if not rows:
            return
        again = json.dumps([rowid for rowid, indexed, _ in rows if indexed])
        conn.execute(
            "DELETE FROM task_search WHERE rowid IN (SELECT value FROM json_each(?))", (again,)
        )
        conn.execute(_INSERT_DOCUMENTS, (json.dumps([rowid for rowid, _, _ in rows]),))
        self.indexed += len(rows)
        final = json.dumps([rowid for rowid, _, terminal in rows if terminal])
        conn.execute(
            "DELETE FROM task_search_pending WHERE task_rowid IN (SELECT value FROM json_each(?))",
            (final,),
        )
        conn.execute(
            "UPDATE task_search_pending SET indexed = 1"
            " WHERE task_rowid IN (SELECT value FROM json_each(?))",
            (json.dumps([rowid for rowid, _, terminal in rows if not terminal]),),
        )

    def _index_new(self, conn: sqlite3.Connection, rows: list[tuple[int, int, int]]) -> None:
        ready = [rowid for rowid, settled, _ in rows if settled]
        if ready:
            conn.execute(_INSERT_DOCUMENTS, (json.dumps(ready),))
            self.indexed += len(ready)
        waiting = [(rowid, int(bool(settled))) for rowid, settled, terminal in rows
                   if not (settled and terminal)]  # fmt: skip
        if waiting:
            conn.executemany(
                "INSERT INTO task_search_pending (task_rowid, indexed) VALUES (?, ?)", waiting
            )


_TOUCHED = """
INSERT INTO task_search_pending (task_rowid, indexed)
SELECT rowid, 1 FROM tasks
WHERE id = ? AND rowid <= (SELECT position FROM task_search_state)
ON CONFLICT (task_rowid) DO NOTHING
"""


def touched(conn: sqlite3.Connection, task_ids: list[str]) -> None:
    """Tasks whose searchable text was just written: those indexed already go pending again.

    Called by the ingestor inside its write transaction, for the rows that
    brought args, kwargs or an exception; a task not indexed yet is left alone
    (the indexer reaches it in turn).
    """
    if task_ids:
        conn.executemany(_TOUCHED, [(task_id,) for task_id in task_ids])


def forget(conn: sqlite3.Connection, rowids: list[int]) -> None:
    """Drop the documents of tasks about to be deleted, inside the caller's transaction."""
    marks = json.dumps(rowids)
    conn.execute(
        "DELETE FROM task_search WHERE rowid IN (SELECT value FROM json_each(?))", (marks,)
    )
    conn.execute(
        "DELETE FROM task_search_pending WHERE task_rowid IN (SELECT value FROM json_each(?))",
        (marks,),
    )


def forgotten(conn: sqlite3.Connection) -> None:
    """After tasks were deleted: keep the position at or below the newest rowid left.

    SQLite gives a new row the largest rowid plus one, so once the newest task
    is gone its rowid comes back, to a task the index has not seen. Spans below
    the oldest task left go.
    """
    conn.execute(
        "UPDATE task_search_state"
        " SET position = MIN(position, COALESCE((SELECT MAX(rowid) FROM tasks), 0))"
    )
    conn.execute(
        "DELETE FROM task_search_spans WHERE span < (SELECT MIN(rowid) FROM tasks) >> ?",
        (SPAN_BITS,),
    )


def trigrams(text: str) -> list[str] | None:
    """The distinct trigrams of ``text``, or ``None`` when a search for it must scan.

    Every task whose text contains ``text`` holds each of them: the trigram
    tokenizer folds case for all of Unicode, ``LIKE`` for ASCII only, so an
    index query for any of them matches at least what ``LIKE`` does, and the
    ``LIKE`` on the rows decides. A NUL ends a ``LIKE`` pattern early, so a
    text with one scans as it always did.
    """
    if len(text) < MIN_LENGTH or "\x00" in text:
        return None
    return list(dict.fromkeys(text[i : i + 3] for i in range(len(text) - 2)))


def _quoted(trigram: str) -> str:
    return '"' + trigram.replace('"', '""') + '"'


def match_expression(conn: sqlite3.Connection, grams: list[str], top: int) -> str:
    """An FTS5 query for the rarest few of ``grams`` (AND; ``detail='none'`` has no phrases).

    A trigram found in most tasks filters little and costs a walk of its whole
    list, so the first :data:`PROBE` matches of each of up to :data:`PROBED`
    trigrams tell how dense it is (how far into the rowids they reach), and the
    sparsest are kept: at most :data:`ANDED`, and of those in more than a
    quarter of the tasks only the ones at most four times denser than the
    first. Any of them is a sound filter; the choice only decides how fast.
    """
    if len(grams) > PROBED:
        step = (len(grams) - 1) / (PROBED - 1)
        grams = [grams[round(i * step)] for i in range(PROBED)]
    estimated = []
    for gram in grams:
        quoted = _quoted(gram)
        found, first, last = conn.execute(
            "SELECT COUNT(*), MIN(r), MAX(r) FROM"
            " (SELECT rowid AS r FROM task_search WHERE task_search MATCH ? LIMIT ?)",
            (quoted, PROBE),
        ).fetchone()
        if found < PROBE:
            estimated.append((float(found), quoted))
        else:
            estimated.append((found * (top - first + 1) / (last - first + 1), quoted))
    estimated.sort(key=lambda pair: pair[0])
    rarest = estimated[0][0]
    dense = max(4 * rarest + PROBE, top / 4)
    kept = [quoted for found, quoted in estimated[:ANDED] if found <= dense]
    return " AND ".join(kept)


@dataclass(frozen=True)
class Narrowed:
    """The rows a search must check: candidates of the index, and what it does not cover.

    The candidates come in spans of rowids, newest first by the latest
    first-seen time any task of the span had when indexed (``task_search_spans``).
    First-seen times only ever move earlier, so once a page is full of rows
    seen after the next span's bound, no task of that span or of any later one
    can enter it: the page is final without sorting every candidate.
    """

    position: int
    spans: list[tuple[float, list[int]]]
    """``(latest first-seen time, candidate rowids)`` per span, latest first."""

    def rounds(self, first: int) -> Iterator[tuple[str, float | None]]:
        """``(JSON of the next candidates, bound on the first-seen time of the rest)``.

        Rounds of at least ``first`` candidates, doubling, up to
        :data:`MOST_WALKED` in all; the bound is ``None`` when none is left.
        Ends without a ``None`` bound when the walk grew too long: scan then.
        """
        taken: list[int] = []
        walked = 0
        goal = max(first, FIRST_ROUND)
        for i, (_, rowids) in enumerate(self.spans):
            taken.extend(rowids)
            if i + 1 == len(self.spans):
                yield json.dumps(taken), None
                return
            if len(taken) >= goal:
                walked += len(taken)
                if walked > MOST_WALKED:
                    return
                yield json.dumps(taken), self.spans[i + 1][0]
                taken, goal = [], 2 * goal
        yield json.dumps(taken), None


FOUND = (
    "SELECT value FROM json_each(?) UNION SELECT task_rowid FROM task_search_pending"
    " UNION SELECT rowid FROM tasks WHERE rowid > ?"
)
"""The rowids to check first: candidates (JSON), pending tasks, those past the position."""

MORE = "SELECT value FROM json_each(?)"
"""The rowids to check in the later rounds of a walk: more candidates."""


def narrow(conn: sqlite3.Connection, text: str) -> Narrowed | None:
    """What a search for ``text`` must check, or ``None`` to scan the whole table.

    Run it in the same read transaction as the query (:func:`snapshot`): the
    position and the pending tasks must be those of the index it read.
    """
    grams = trigrams(text)
    if grams is None:
        return None
    position = int(conn.execute("SELECT position FROM task_search_state").fetchone()[0])
    top = conn.execute("SELECT MAX(rowid) FROM tasks").fetchone()[0] or 0
    pending = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM task_search_pending LIMIT ?)", (MOST_UNINDEXED + 1,)
    ).fetchone()[0]
    if max(int(top) - position, 0) + int(pending) > MOST_UNINDEXED:
        return None
    expression = match_expression(conn, grams, int(top))
    select = "SELECT rowid FROM task_search WHERE task_search MATCH ? ORDER BY rowid DESC LIMIT ?"
    rowids = [row[0] for row in conn.execute(select, (expression, MOST_CANDIDATES + 1))]
    if len(rowids) <= MOST_CANDIDATES:
        return Narrowed(position, [(math.inf, rowids)])
    if top - rowids[-1] < DENSE * MOST_CANDIDATES:
        return None  # common among the newest tasks: a scan fills a page at once
    rowids = [row[0] for row in conn.execute(select, (expression, MOST_MATCHES + 1))]
    if len(rowids) > MOST_MATCHES:
        return None
    by_span: dict[int, list[int]] = {}
    for rowid in rowids:
        by_span.setdefault(rowid >> SPAN_BITS, []).append(rowid)
    bounds = dict(
        conn.execute(
            "SELECT span, max_seen FROM task_search_spans"
            " WHERE span IN (SELECT value FROM json_each(?))",
            (json.dumps(list(by_span)),),
        ).fetchall()
    )
    spans = [(float(bounds.get(span, math.inf)), found) for span, found in by_span.items()]
    spans.sort(key=lambda pair: pair[0], reverse=True)
    return Narrowed(position, spans)


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around several statements (unless one is open already)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")
