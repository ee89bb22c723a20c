"""Input the consumers left out: what it is, how it is counted, and what the pages read of it.

Counts by reason (:func:`reason_key`, the reason without its values) and the
newest raw samples, written in the same transaction as the batch that skipped
them, so they survive restarts.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stemtrace.core import jsonio
from stemtrace.core.bounds import bound
from stemtrace.store.dbapi import Executes


@dataclass(frozen=True)
class Skip:
    """One piece of input left out: why, where on the stream, and what it was."""

    reason: str
    where: str
    sample: object
    """The raw entry (bytes) or the event as sent; kept truncated."""


SAMPLES_KEPT = 50
"""Raw samples of skipped input the ``skipped_samples`` table keeps (the newest)."""
SAMPLE_CHARS = 2000

_QUOTED = re.compile(r"\([^()]*\)|'[^']*'|\"[^\"]*\"|\[[^\]]*\]")
_NUMBER = re.compile(r"\d[\d,.]*")


def reason_key(reason: str) -> str:
    """What skipped input is counted under: the reason without its values (bounded)."""
    for _ in range(3):  # parentheses within parentheses
        reason = _QUOTED.sub(_keep_field_names, reason)
    return _NUMBER.sub("N", reason).strip()[:120]


def _keep_field_names(match: re.Match[str]) -> str:
    text = match[0]
    return text if _FIELD_NAME.fullmatch(text) else "…"


_FIELD_NAME = re.compile(r"'[a-z_]{1,30}'")


def sample_text(sample: object) -> str:
    """A skipped entry or event as text of at most :data:`SAMPLE_CHARS` characters."""
    if isinstance(sample, bytes | bytearray):
        text = bytes(sample[: SAMPLE_CHARS * 4]).decode("utf-8", "replace")
    elif isinstance(sample, str):
        text = sample
    else:
        try:
            text = jsonio.dumps(bound(sample, max_depth=8, max_items=50, max_string=500,
                                max_size=SAMPLE_CHARS))  # fmt: skip
        except Exception:
            text = f"<a {type(sample).__name__} that cannot be shown>"
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def record(conn: sqlite3.Connection, skipped: Sequence[Skip], source: str, now: float) -> None:
    """Count ``skipped`` by reason and keep their newest samples (in the caller's transaction)."""
    counts: dict[str, int] = {}
    for skip in skipped:
        key = reason_key(skip.reason)
        counts[key] = counts.get(key, 0) + 1
    conn.executemany(
        "INSERT INTO skipped (reason, count, first_at, last_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count,"
        " last_at = excluded.last_at",
        [(key, count, now, now) for key, count in counts.items()],
    )
    conn.executemany(
        "INSERT INTO skipped_samples (at, source, place, reason, sample)"
        " VALUES (?, ?, ?, ?, ?)",
        [(now, source, s.where[:200], s.reason[:500], sample_text(s.sample))
         for s in skipped[-SAMPLES_KEPT:]],
    )  # fmt: skip
    conn.execute(
        "DELETE FROM skipped_samples WHERE id <= (SELECT MAX(id) FROM skipped_samples) - ?",
        (SAMPLES_KEPT,),
    )


def summary(conn: Executes, samples: int = 20) -> dict[str, Any]:
    """Input the consumers left out, as kept in the database: by reason, and the newest samples."""
    reasons = [
        {"reason": reason, "count": count, "first_at": first, "last_at": last}
        for reason, count, first, last in conn.execute(
            "SELECT reason, count, first_at, last_at FROM skipped ORDER BY count DESC LIMIT 200"
        )
    ]
    recent = [
        {"at": at, "source": source, "place": place, "reason": reason, "sample": sample}
        for at, source, place, reason, sample in conn.execute(
            "SELECT at, source, place, reason, sample FROM skipped_samples"
            " ORDER BY id DESC LIMIT ?",
            (samples,),
        )
    ]
    total = conn.execute("SELECT COALESCE(SUM(count), 0) FROM skipped").fetchone()[0]
    return {"total": int(total), "by_reason": reasons, "samples": recent}
