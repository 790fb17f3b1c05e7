"""The gateway's lock files (make lock): they pin every dependency pyproject.toml names, the
image's runtime lock agrees with the dev lock, and .venv holds exactly the dev lock."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from worker.profiles import REPO_ROOT


def _pins(path: Path) -> dict[str, str]:
    """name -> version for every pin that applies to this interpreter."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", spec.strip())
        assert match, f"{path.name}: not an exact pin: {line}"
        pins[canonicalize_name(match.group(1).split("[")[0])] = match.group(2)
    return pins


def _declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return runtime, dev


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    runtime_lock = _pins(REPO_ROOT / "requirements.lock")
    dev_lock = _pins(REPO_ROOT / "requirements-dev.lock")
    runtime, dev = _declared()
    for lock, requirements in ((runtime_lock, runtime), (dev_lock, runtime + dev)):
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in lock, f"{name} is not in the lock: run `make lock`"
            assert requirement.specifier.contains(lock[name], prereleases=True), (
                f"{name}=={lock[name]} is outside {requirement.specifier}: run `make lock`"
            )


def test_the_images_lock_agrees_with_the_dev_lock() -> None:
    runtime_lock = _pins(REPO_ROOT / "requirements.lock")
    dev_lock = _pins(REPO_ROOT / "requirements-dev.lock")
    differing = {n: (v, dev_lock.get(n)) for n, v in runtime_lock.items() if dev_lock.get(n) != v}
    assert not differing
    # ...and it holds no developer tool.
    assert not {"pytest", "mypy", "ruff", "locust"} & set(runtime_lock)


def test_the_gateway_venv_holds_exactly_the_dev_lock() -> None:
    """make install installs the lock, so the pins are what ran every other test."""
    installed = {
        str(canonicalize_name(dist.metadata["Name"])): dist.version
        for dist in metadata.distributions()
    }
    dev_lock = _pins(REPO_ROOT / "requirements-dev.lock")
    wrong = {n: (v, installed.get(n)) for n, v in dev_lock.items() if installed.get(n) != v}
    assert not wrong, f"installed differs from requirements-dev.lock: {wrong}"
