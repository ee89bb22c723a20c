"""One vocabulary for outside values: each coercer means the same for capture and -E."""

from __future__ import annotations

from datetime import UTC, datetime

from stemtrace.core import coerce


def test_a_bool_is_never_a_count_or_a_number() -> None:
    assert coerce.count(True) is None and coerce.count(3) == 3 and coerce.count(3.0) is None
    assert coerce.number(False) is None and coerce.number(2.5) == 2.5 and coerce.number(2) == 2


def test_text_keeps_or_rejects_and_text_of_writes() -> None:
    assert coerce.text("a") == "a" and coerce.text("") is None and coerce.text(1) is None
    moment = datetime(2026, 12, 4, tzinfo=UTC)
    assert coerce.text_of(moment) == "2026-12-04T00:00:00+00:00"
    assert coerce.text_of(None) is None and coerce.text_of(7) == "7"
