"""The garbage-collector settings of stemtrace's own processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from stemtrace.cli import gc as collector
from stemtrace.cli import main as cli


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored")
def test_tune_freezes_what_exists_and_widens_the_young_generation() -> None:
    gc.set_threshold(700, 10, 10)
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG, 10, 10)
    assert gc.get_freeze_count() > 0
    gc.set_threshold(10 * collector.YOUNG, 5, 5)  # a process tuned wider keeps its setting
    collector.tune()
    assert gc.get_threshold() == (10 * collector.YOUNG, 5, 5)


def test_the_server_tunes_its_collector_before_serving(tmp_path: Path) -> None:
    calls: list[str] = []
    with (
        mock.patch.object(collector, "tune", lambda: calls.append("tune")),
        mock.patch("uvicorn.run", lambda *a, **k: calls.append("serve")),
    ):
        assert cli.main(["run", "--db", str(tmp_path / "s.db"), "--port", "1"]) == 0
    assert calls == ["tune", "serve"]
