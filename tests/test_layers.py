"""The gateway's layout: stages import downwards, never up, and no module cycle exists.

Each area (a top-level module, or a package) has a rank; a module may import its own
area and areas of lower rank. The exceptions: gateway.config gathers every package's
``settings`` module, and command-line entry points (``cli``, ``__main__``) stand on
top. The ranks are the request's path read bottom-up, as the layout section of
docs/DEVELOPING.md lists it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

RANKS: Final[dict[str, int]] = {
    "gateway": 0,  # the package itself: __version__
    "gateway.protocol": 0,
    "gateway.metrics": 0,
    "gateway.background": 0,
    "gateway.children": 0,
    "gateway.loop_lag": 0,
    "gateway.breaker": 0,
    "gateway.answers": 0,
    "gateway.json_text": 0,
    "gateway.db": 0,
    "gateway.errors": 1,
    "gateway.orientation": 1,  # EXIF orientation from image bytes (images.py reads it)
    "gateway.heif": 1,  # HEIC/HEIF through pillow-heif (images.py reads it)
    "gateway.errors_doc": 2,
    "gateway.redis_link": 1,
    "gateway.metric_types": -1,  # below everything: metrics.py builds on it
    "gateway.config": 2,
    "gateway.images": 2,
    "gateway.middleware": 2,
    "gateway.cors": 2,
    "gateway.server": 2,
    "gateway.auth": 3,
    "gateway.ratelimit": 3,
    "gateway.interactions": 3,
    "gateway.remote_images": 3,
    "gateway.upstream": 3,
    "gateway.streams": 3,
    "gateway.validation": 4,
    "gateway.batch": 4,
    "gateway.cache": 5,
    "gateway.moderation": 5,
    "gateway.admission": 6,
    "gateway.notes": 6,
    "gateway.charge": 7,
    "gateway.pipeline": 8,
    "gateway.matching": 8,
    "gateway.routes": 9,
    "gateway.app": 10,
    "gateway.__main__": 11,
}


# Command-line entry points (python -m gateway.auth ...) stand above every stage.
ENTRY_POINTS: Final = frozenset({"__main__", "cli"})


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "gateway").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES: Final = _modules()


def _area(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports(module: str) -> set[str]:
    """Gateway modules imported at module level (what runs when this one is imported),
    with the packages Python initialises on the way."""
    found: set[str] = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    for name in list(found):
        parts = name.split(".")
        for end in range(2, len(parts)):
            parent = ".".join(parts[:end])
            if parent in MODULES and not module.startswith(parent + "."):
                found.add(parent)
    found.discard(module)
    return found


GRAPH: Final = {module: _imports(module) for module in MODULES}


def test_every_area_has_a_rank() -> None:
    assert {_area(module) for module in MODULES} <= set(RANKS)


def test_no_import_goes_up() -> None:
    # gateway.config imports each package's settings module (and with it, the package).
    settings = {name for name in GRAPH["gateway.config"] if name.endswith(".settings")}
    gathered = settings | {name.removesuffix(".settings") for name in settings}
    upward = []
    for module, imported in GRAPH.items():
        if module.rsplit(".", 1)[-1] in ENTRY_POINTS:
            continue
        here = _area(module)
        for name in imported:
            there = _area(name)
            if there == here or (module == "gateway.config" and name in gathered):
                continue
            if RANKS[there] >= RANKS[here] and there != "gateway":
                upward.append(f"{module} -> {name}")
    assert upward == []


def test_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for name in sorted(GRAPH[module]):
            if state.get(name) == 1:
                cycles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_checks_see_an_upward_import() -> None:
    """The rank check would catch a validation module importing the pipeline."""
    assert RANKS[_area("gateway.pipeline")] > RANKS[_area("gateway.validation.prepare")]
    assert "gateway.cache.stage" in GRAPH["gateway.pipeline"]
    assert "gateway.validation.prepare" in GRAPH["gateway.cache.stage"]


def test_no_module_over_450_lines() -> None:
    long = {
        name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 450
    }
    assert long == {}
