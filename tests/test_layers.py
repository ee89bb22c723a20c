"""The layers of the package, each held to what it may import; a check that can fail.

Every module belongs to exactly one layer (a test says so), every layer has a
rule, and a test plants a backward import in a copy of the package and sees
the check refuse it.
"""

from __future__ import annotations

import ast
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stemtrace"

WEB = ("fastapi", "starlette", "jinja2", "sse_starlette", "uvicorn", "markupsafe")
STORE = ("sqlite_utils", "sqlite3", "psycopg", "psycopg_pool")

EVERY = frozenset({"core", "transports", "capture", "store", "model", "settings", "ingest",
                   "server", "cli", "root"})  # fmt: skip

# layer -> (stemtrace layers it may import, third-party roots it must not import)
RULES: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "core": (frozenset({"core"}), (*WEB, *STORE, "celery", "kombu", "redis", "graphviz")),
    "transports": (frozenset({"core", "transports"}), (*WEB, *STORE)),
    "capture": (frozenset({"core", "transports", "capture"}), (*WEB, *STORE)),
    "store": (frozenset({"core", "store"}), (*WEB, "celery", "kombu", "redis")),
    "model": (frozenset({"core", "model"}), (*WEB, *STORE, "celery", "kombu", "redis")),
    "settings": (frozenset({"core", "store", "settings"}), WEB),
    "ingest": (frozenset({"core", "transports", "store", "settings", "ingest"}), WEB),
    "server": (EVERY - {"capture", "cli"}, ()),
    "cli": (EVERY, ()),
    "root": (frozenset({"core", "capture", "root"}), (*WEB, *STORE)),
}


def layer_of(module: str) -> str:
    """``stemtrace.core.events`` -> ``core``; ``stemtrace`` itself -> ``root``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "stemtrace":  # from stemtrace import x: the names are modules
                found.update(f"stemtrace.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    """Every import that breaks its module's layer rule, as ``module -> import``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package)
        allowed, banned = RULES[layer_of(name)]
        for imported in imports_of(path):
            if imported == "stemtrace.__version__":
                continue
            if imported.startswith("stemtrace."):
                target = layer_of(imported)
                if target not in allowed:
                    found.append(f"{name} -> {imported}")
            elif imported == "stemtrace":
                if "root" not in allowed:
                    found.append(f"{name} -> stemtrace")
            elif imported.split(".")[0] in banned:
                found.append(f"{name} -> {imported}")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p))
def test_every_module_has_a_layer_with_a_rule(path: Path) -> None:
    assert layer_of(module_name(path)) in RULES, module_name(path)


def test_no_module_imports_against_its_layer() -> None:
    assert violations() == []


def test_core_imports_the_standard_library_and_orjson_only() -> None:
    for path in (PACKAGE / "core").rglob("*.py"):
        for imported in imports_of(path):
            root = imported.split(".")[0]
            assert (
                root in sys.stdlib_module_names
                or root in ("__future__", "orjson")
                or (imported.startswith("stemtrace.core"))
            ), (path.name, imported)


_SQL = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "PRAGMA ", "BEGIN ", "WITH ")


def sql_outside_the_store(package: Path = PACKAGE) -> list[str]:
    """String literals that read as SQL in modules outside ``stemtrace/store``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.lstrip().startswith(_SQL):
                found.append(f"{module_name(path, package)}: {text.strip()[:60]!r}")
    return found


def test_no_sql_outside_the_store() -> None:
    assert sql_outside_the_store() == []


def test_the_sql_check_can_fail(tmp_path: Path) -> None:
    copy = tmp_path / "stemtrace"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("static", "templates"))
    target = copy / "server" / "pages.py"
    target.write_text(target.read_text() + '\nQUERY = "SELECT 1 FROM tasks"\n')
    assert sql_outside_the_store(copy) == ["stemtrace.server.pages: 'SELECT 1 FROM tasks'"]


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("core/events.py", "from stemtrace.store import schema"),
        ("capture/publisher.py", "import fastapi"),
        ("store/queries.py", "from stemtrace.model import flows"),
        ("model/flows.py", "import sqlite3"),
        ("transports/redis.py", "from stemtrace.capture import payload"),
        ("ingest/consumer.py", "from stemtrace.server import render"),
    ],
)
def test_a_backward_import_planted_in_a_copy_is_caught(
    tmp_path: Path, module: str, planted: str
) -> None:
    copy = tmp_path / "stemtrace"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("static", "templates"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{planted}\n")
    found = violations(copy)
    assert len(found) == 1 and found[0].startswith(module_name(target, copy)), found


def test_import_and_init_in_a_worker_stay_light() -> None:
    code = (
        "import sys, stemtrace\n"
        "from celery import Celery\n"
        "app = Celery('x', broker='redis://127.0.0.1:6379/0', set_as_current=False)\n"
        "stemtrace.init(app)\n"
        "heavy = ('fastapi', 'starlette', 'jinja2', 'sqlite_utils', 'sqlite3', 'psycopg',\n"
        "         'stemtrace.server', 'stemtrace.store', 'uvicorn')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pages_lean_on_views_not_on_the_api() -> None:
    """What both read lives in server/views.py; neither imports the other."""
    pages = imports_of(PACKAGE / "server" / "pages.py")
    api = imports_of(PACKAGE / "server" / "api.py")
    assert "stemtrace.server.api" not in pages and "stemtrace.server.pages" not in api
    assert "stemtrace.server.views" in pages and "stemtrace.server.views" in api


def imported_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """Our modules ``path`` imports, ``from a import b`` counted as ``a.b`` when b is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stemtrace"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("stemtrace"):
                continue
            base = package.parent.joinpath(*node.module.split("."))
            for alias in node.names:
                is_module = (base / f"{alias.name}.py").exists() or (base / alias.name).is_dir()
                found.add(f"{node.module}.{alias.name}" if is_module else node.module)
    return found


STORE_SURFACE = frozenset({"stemtrace.store", "stemtrace.store.surface"})


def reaches_behind_the_store(package: Path = PACKAGE) -> list[str]:
    """Imports from outside ``store/`` of a store module other than its surface."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "store"):
            continue
        for imported in sorted(imported_modules(path, package)):
            if imported.startswith("stemtrace.store") and imported not in STORE_SURFACE:
                found.append(f"{module_name(path, package)} -> {imported}")
    return found


def test_the_rest_reads_the_store_through_its_surface_only() -> None:
    """A second backend implements stemtrace.store.surface; nothing may lean past it."""
    assert reaches_behind_the_store() == []


def test_the_store_surface_check_can_fail(tmp_path: Path) -> None:
    copy = tmp_path / "stemtrace"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("static", "templates"))
    target = copy / "server" / "api.py"
    target.write_text(target.read_text() + "\nfrom stemtrace.store import queries\n")
    assert reaches_behind_the_store(copy) == ["stemtrace.server.api -> stemtrace.store.queries"]


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Cycles among our modules' imports (any import, TYPE_CHECKING and in functions too)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {
        name: {m for m in imported_modules(path, package) if m in modules and m != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_no_import_cycle() -> None:
    assert import_cycles() == []


def test_the_cycle_check_can_fail(tmp_path: Path) -> None:
    copy = tmp_path / "stemtrace"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("static", "templates"))
    target = copy / "server" / "views.py"
    target.write_text(target.read_text() + "\nfrom stemtrace.server import api\n")
    cycles = import_cycles(copy)
    assert cycles  # each through the planted import, views -> api, whatever path leads there
    for cycle in cycles:
        edges = set(itertools.pairwise(cycle))
        assert ("stemtrace.server.views", "stemtrace.server.api") in edges, cycle


MOST_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """A module past this holds more than one thing: split it (issue 14)."""
    long = {
        module_name(path): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}
