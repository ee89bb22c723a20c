"""The docs name every option and every event field (as sqlite-utils' test_docs does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stemtrace import events as ev
from stemtrace.capture.config import CaptureConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EVENTS_DOC = (ROOT / "docs" / "events.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(CaptureConfig)])
def test_every_capture_option_is_in_the_readme(name: str) -> None:
    assert f"| `{name}` |" in README


EVENT_FIELDS = sorted({*ev.COMMON_FIELDS, *ev.TASK_FIELDS, *ev.OPTIONAL_FIELDS})


@pytest.mark.parametrize("name", EVENT_FIELDS)
def test_every_event_field_is_documented(name: str) -> None:
    assert f"| `{name}` |" in EVENTS_DOC


@pytest.mark.parametrize("kind", sorted(ev.KINDS))
def test_every_event_kind_is_documented(kind: str) -> None:
    assert f"| `{kind}` |" in EVENTS_DOC


def test_the_readme_opens_with_the_two_commands() -> None:
    setup = README.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    assert "stemtrace" in setup and "bash scripts/test" in setup
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text().replace("exec ", "")
