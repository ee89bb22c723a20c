"""One vocabulary for turning outside values into event fields: capture and Celery's events.

Each name means one thing everywhere: a bool is never a count or a number (``True``
is not one retry), and text is either kept as given or rejected, never guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def count(value: Any) -> int | None:
    """An integer that is not a bool, else ``None``."""
    return value if type(value) is int else None


def number(value: Any) -> int | float | None:
    """An int or a float that is not a bool, else ``None``."""
    return value if type(value) in (int, float) else None


def text(value: Any) -> str | None:
    """A non-empty string, else ``None`` (for fields Celery's events may leave out)."""
    return value if type(value) is str and value else None


def text_of(value: Any) -> str | None:
    """``value`` written as text: a string as it is, a time in ISO-8601, ``None`` kept."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def moment(value: Any) -> float | None:
    """An ISO-8601 time as Celery writes an ``eta`` (naive means UTC) in epoch
    seconds; ``None`` for anything else, never an exception."""
    if type(value) is not str or not 10 <= len(value) <= 40:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
