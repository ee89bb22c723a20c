"""The docs name every option and every event field (as sqlite-utils' test_docs does)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stemtrace.capture.config import CaptureConfig
from stemtrace.cli.main import build_parser
from stemtrace.core import events as ev
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
                                  "/api/flows/{id}/graph.svg", "/api/flows", "/api/traces",
                                  "/api/errors",
                                  "/api/registry", "/api/workers", "/api/health",
                                  "/api/stats"])  # fmt: skip
def test_every_api_path_is_in_the_readme(path: str) -> None:
    assert f"`GET {path}`" in README


def test_the_readme_says_which_python_it_needs() -> None:
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required.startswith(">=")
    assert f"Python {required.removeprefix('>=')} or newer" in README


def python_blocks() -> list[tuple[int, str]]:
    """Each ```python block of the README, with the line it starts on."""
    return [
        (README.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```$", README, re.S | re.M)
    ]


USER_NAMES = {"reserve", "charge", "notify", "order"}
# Stand-ins for the reader's own names, and only those: their tasks, their
# order, their user model and auth dependency (``myapp.auth``). Everything the
# snippets take from stemtrace, Celery or FastAPI they must import themselves.
STAND_INS = """
import sys, types
from celery import Celery as _Celery

_app = _Celery("yours", broker="memory://", set_as_current=False)


def _step(*args):
    return args


reserve, charge, notify = (
    _app.task(_step, name=f"yours.{name}", shared=False) for name in ("reserve", "charge", "notify")
)


class User:
    is_staff = True


def current_user() -> User:
    return User()


_auth = types.ModuleType("myapp.auth")
_auth.User, _auth.current_user = User, current_user
sys.modules["myapp"] = types.ModuleType("myapp")
sys.modules["myapp.auth"] = _auth
namespace = {"__name__": "__main__", "reserve": reserve, "charge": charge, "notify": notify,
             "order": {"id": 42}}
exec(compile(sys.argv[1], sys.argv[2], "exec"), namespace)
"""


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=lambda v: str(v)[:30])
def test_every_python_block_in_the_readme_runs(line: int, code: str, tmp_path: Path) -> None:
    """In a fresh process and an empty directory (a snippet may create ``stemtrace.db``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", STAND_INS, code, f"README.md:{line}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # and nothing imported for nothing, nothing used unimported (pyflakes' rules)
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F",
         "--config", f"builtins = {sorted(USER_NAMES)}",
         "--stdin-filename", f"README_{line}.py", "-"],
        input=code, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
