"""The layering rule of the package docstring, checked on the code itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stemtrace"

# module prefix -> stemtrace modules it may import
ALLOWED = {
    "stemtrace.jsonio": set(),
    "stemtrace.bounds": set(),
    "stemtrace.events": {"stemtrace.jsonio", "stemtrace.bounds"},
    "stemtrace.transports": {"stemtrace.transports"},
    "stemtrace.capture": {
        "stemtrace.events",
        "stemtrace.jsonio",
        "stemtrace.bounds",
        "stemtrace.transports",
        "stemtrace.capture",
    },
}
WEB_AND_STORE = ("fastapi", "starlette", "jinja2", "sqlite_utils", "sse_starlette", "uvicorn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_each_module_imports_only_the_layers_below(path: Path) -> None:
    name = module_name(path)
    layer = next((prefix for prefix in ALLOWED if name.startswith(prefix)), None)
    if layer is None:
        return  # store, server, cli: on top, may import anything below
    for imported in imports_of(path):
        if imported.startswith("stemtrace."):
            assert any(imported.startswith(ok) for ok in ALLOWED[layer]), (name, imported)
        assert not imported.startswith(WEB_AND_STORE), (name, imported)
    if layer in (
        "stemtrace.events",
        "stemtrace.jsonio",
        "stemtrace.bounds",
    ):  # the core: stdlib and orjson only
        assert all(
            i.split(".")[0] in sys.stdlib_module_names
            or i in ("__future__", "orjson")
            or i in ALLOWED[layer]
            for i in imports_of(path)
        ), name


def test_import_and_init_in_a_worker_stay_light() -> None:
    code = (
        "import sys, stemtrace\n"
        "from celery import Celery\n"
        "app = Celery('x', broker='redis://127.0.0.1:6379/0', set_as_current=False)\n"
        "stemtrace.init(app)\n"
        "heavy = ('fastapi', 'starlette', 'jinja2', 'sqlite_utils', 'sqlite3',\n"
        "         'stemtrace.server', 'stemtrace.store', 'uvicorn')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
