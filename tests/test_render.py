"""What render.py turns data into: durations and state looks (shared with the island), badges."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from stemtrace.core import states
from stemtrace.server import render

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = json.loads((ROOT / "react-graph" / "test" / "durations.json").read_text())
"""The cases react-graph/test/model.test.js holds the island's formatDuration to as well."""
STATES_FIXTURE = ROOT / "react-graph" / "test" / "states.json"
"""The states table as the page hands it to the island, for the island's node tests."""


@pytest.mark.parametrize(("seconds", "shown"), DURATIONS)
def test_one_duration_format_for_pages_and_graph(seconds: float, shown: str) -> None:
    assert render.duration(seconds) == shown


def test_a_duration_changes_unit_where_its_rounded_value_does() -> None:
    """Rounding up never gives "1000 ms" or "60 s": the next unit takes over."""
    for boundary in (0.1, 1.0, 10.0, 60.0, 3600.0):
        just_below = math.nextafter(boundary, 0)
        assert render.duration(just_below) == render.duration(boundary)
    assert render.duration(None) == "—"
    assert render.duration(math.inf) == "∞"
    assert render.duration(math.nan) == "—"


def test_the_scrubbed_badge_needs_no_emoji_font() -> None:
    badge = BeautifulSoup(str(render.pretty({"__stemtrace__": "scrubbed"})), "html.parser")
    mark = badge.select_one("span.badge.scrubbed")
    assert mark is not None
    text = mark.get_text()
    assert text.strip() == "scrubbed"
    assert all(ord(c) < 0x2000 for c in text), text  # no pictograph that needs an emoji font
    icon = mark.find("svg")
    assert icon is not None and icon.get("aria-hidden") == "true"


def test_the_island_tests_read_the_states_table_the_pages_hand_over() -> None:
    """The island has no table of its own (the page carries LOOKS); its tests' copy is LOOKS."""
    regenerate = (
        "python -c 'import json; from stemtrace.core.states import LOOKS; "
        "print(json.dumps(LOOKS, ensure_ascii=False, indent=1))' > react-graph/test/states.json"
    )
    fixture = json.loads(STATES_FIXTURE.read_text(encoding="utf-8"))
    assert fixture == json.loads(json.dumps(states.LOOKS)), f"stale: {regenerate}"
