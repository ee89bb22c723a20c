"""The committed graph bundle is what react-graph/ builds: the two cannot drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_bundle_matches_a_fresh_build() -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is needed to rebuild react-graph/: the test command installs it")
    result = subprocess.run(
        ["bash", str(ROOT / "react-graph" / "check-bundle.sh")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "graph bundle is fresh" in result.stdout


def test_the_flow_page_loads_the_bundle_it_ships() -> None:
    template = (ROOT / "stemtrace" / "templates" / "flow.html").read_text()
    for name in ("stemtrace-graph.js", "stemtrace-graph.css"):
        assert f"graph/{name}" in template
        assert (ROOT / "stemtrace" / "static" / "graph" / name).stat().st_size > 1000
