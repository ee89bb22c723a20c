"""The docs name every option and every event field (as sqlite-utils' test_docs does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stemtrace import events as ev
from stemtrace.capture.config import CaptureConfig
from stemtrace.cli import build_parser
from stemtrace.settings import Settings

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


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_server_setting_is_in_the_readme(name: str) -> None:
    assert f"`STEMTRACE_{name.upper()}" in README


def cli_flags() -> list[str]:
    parser = build_parser()
    flags: set[str] = set()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for sub in action.choices.values():
            for option in sub._actions:
                flags.update(f for f in option.option_strings if f.startswith("--"))
    return sorted(flags - {"--help"})


@pytest.mark.parametrize("flag", cli_flags())
def test_every_cli_flag_is_in_the_readme(flag: str) -> None:
    assert f"`{flag}`" in README


@pytest.mark.parametrize("path", ["/api/tasks", "/api/tasks/{id}", "/api/flows/{id}",
                                  "/api/groups/{group_id}/members", "/api/traces/{trace_id}",
                                  "/api/flows/{id}/waterfall", "/api/flows/{id}/graph.dot",
                                  "/api/flows/{id}/graph.svg",
                                  "/api/registry", "/api/workers", "/api/health"])  # fmt: skip
def test_every_api_path_is_in_the_readme(path: str) -> None:
    assert f"`GET {path}`" in README
