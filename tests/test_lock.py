"""requirements/test.lock pins exactly what pyproject.toml declares: the two cannot drift.

The lock is what the test command installs (`bash scripts/lock` writes it). A
dependency added to, dropped from or narrowed in pyproject.toml without moving
the pins fails here, naming the package and the command that fixes it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.lock"
FIX = "run `bash scripts/lock` (README, Development) and commit requirements/test.lock"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Pin:
    version: Version
    hashes: int = 0
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, list[Pin]]:
    """Each pinned package's releases (one per marker), with its hashes and `via` lines."""
    pins: dict[str, list[Pin]] = {}
    current: Pin | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        if match := _PIN.match(line):
            current = Pin(Version(match[2]))
            pins.setdefault(canonicalize_name(match[1]), []).append(current)
            in_via = False
        elif current is None:
            continue
        elif stripped.startswith("--hash=sha256:"):
            current.hashes += 1
        elif stripped.startswith("# via "):
            current.via.append(stripped.removeprefix("# via ").strip())
            in_via = False
        elif stripped == "# via":
            in_via = True
        elif in_via and stripped.startswith("#   "):
            current.via.append(stripped.removeprefix("#   ").strip())
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # The tests use PostgreSQL too, so the lock holds the ``postgres`` extra.
    names = [*project["dependencies"], *extras["test"], *extras["postgres"]]
    return [Requirement(name) for name in names]


@pytest.fixture(scope="module")
def lock() -> dict[str, list[Pin]]:
    assert LOCK.exists(), f"{LOCK} is missing: {FIX}"
    return parse_lock(LOCK.read_text())


def test_every_declared_dependency_is_pinned_within_its_range(lock: dict[str, list[Pin]]) -> None:
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is declared in pyproject.toml but not pinned: {FIX}"
        for pin in lock[name]:
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"{name}=={pin.version} is pinned but pyproject.toml asks for {requirement}: {FIX}"
            )


def test_the_lock_pins_nothing_pyproject_no_longer_asks_for(lock: dict[str, list[Pin]]) -> None:
    direct = {
        name for name, pins in lock.items() if any("stemtrace" in v for p in pins for v in p.via)
    }
    wanted = {canonicalize_name(r.name) for r in declared()}
    assert direct == wanted, (
        f"direct pins {sorted(direct - wanted)} are no longer declared, "
        f"declared {sorted(wanted - direct)} are not pinned as direct: {FIX}"
    )


def test_every_extra_a_dependency_asks_for_is_pinned(lock: dict[str, list[Pin]]) -> None:
    # celery[redis] needs redis (through kombu[redis]): an extra's packages are pinned too.
    assert "redis" in lock, f"celery[redis] is declared but redis is not pinned: {FIX}"
    assert any(v in ("kombu", "celery") for pin in lock["redis"] for v in pin.via)


def test_every_pin_carries_hashes(lock: dict[str, list[Pin]]) -> None:
    unhashed = [name for name, pins in lock.items() for pin in pins if pin.hashes == 0]
    assert not unhashed, f"pins without hashes (pip --require-hashes refuses them): {unhashed}"


def test_the_check_fails_when_the_two_disagree() -> None:
    # The same parse on a lock that lags pyproject.toml: a narrowed range shows.
    stale = parse_lock(
        "pytest==8.0.0 \\\n    --hash=sha256:ab\n    # via stemtrace (pyproject.toml)\n"
    )
    requirement = Requirement("pytest>=9")
    assert not requirement.specifier.contains(stale["pytest"][0].version)
    assert stale["pytest"][0].via == ["stemtrace (pyproject.toml)"]


def test_the_test_command_installs_from_the_lock() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    assert "--require-hashes -r requirements/test.lock" in script
    assert "--no-deps -e ." in script
    assert "'.[test]'" not in script
