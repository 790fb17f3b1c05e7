"""`make mutation`: mutmut over the modules that decide correctness, one module at a time.

Each module runs in a directory of its own (.mutation/<name>/, ignored by git) whose
pyproject.toml names only that module's files and its fast unit tests (never the engine
tests); mutmut then runs, for each mutant, the tests among those that call the mutated
function. The run starts from fresh copies, so a score always describes today's code.

    python -m tests.mutation.run                    every module
    python -m tests.mutation.run breaker cache-keys  some of them

It prints, per module, the mutants killed, surviving, without a test and timed out, and
lists the undetected ones in .mutation/<name>/survivors.txt (`mutmut show <name>` in that
directory prints one's diff). docs/MUTATION.md keeps the
scores and the verdict on each survivor: a test that kills it, or why it is equivalent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".mutation"
# What the tests import besides the mutated package (copied next to it by mutmut).
ALSO_COPY = ("tests", "worker", "localstack", "nginx")
PYTEST_ARGS = ("-p", "no:cacheprovider", "-m", "not engine")
JOBS = int(os.environ.get("MUTATION_JOBS", "2"))


@dataclass(frozen=True)
class Module:
    files: tuple[str, ...]
    tests: tuple[str, ...]


MODULES: dict[str, Module] = {
    "cache-keys": Module(("gateway/cache/keys.py",), ("tests/test_cache_keys.py",)),
    "coalesce": Module(
        ("gateway/cache/coalesce.py",),
        ("tests/test_cache_coalesce.py", "tests/test_hardening_coalesce.py"),
    ),
    "breaker": Module(("gateway/breaker.py",), ("tests/test_breaker.py",)),
    "ratelimit": Module(
        ("gateway/ratelimit/*",),
        (
            "tests/test_ratelimit_limiters.py",
            "tests/test_ratelimit_estimate.py",
            "tests/test_ratelimit_http.py",
        ),
    ),
    "bounds": Module(
        ("gateway/validation/bounds.py",),
        (
            "tests/test_validation_bounds.py",
            "tests/test_hardening_bounds.py",
            "tests/test_validation_parse_prepare.py",
        ),
    ),
    "log-spool": Module(
        ("gateway/interactions/spool.py",), ("tests/test_interactions_records.py",)
    ),
    "log-writer": Module(
        ("gateway/interactions/writer.py",),
        (
            "tests/test_interactions_records.py",
            "tests/test_interactions_mariadb.py",
            "tests/test_hardening_log.py",
        ),
    ),
    "log-records": Module(
        ("gateway/interactions/records.py",),
        ("tests/test_interactions_records.py", "tests/test_interactions_mariadb.py"),
    ),
}
# It runs `python -m gateway...` from another directory: it needs an installed package.
DESELECT = ("tests/test_interactions_mariadb.py::test_ops_cli_end_to_end",)


def _toml(value: object) -> str:
    # Strings and lists of strings: JSON's spelling is TOML's.
    return json.dumps(value)


def _pyproject(module: Module) -> str:
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    args = [*PYTEST_ARGS, *(arg for test in DESELECT for arg in ("--deselect", test))]
    lines = [
        "[tool.mutmut]",
        'source_paths = ["gateway"]',
        f"only_mutate = {_toml(list(module.files))}",
        f"also_copy = {_toml(list(ALSO_COPY[1:]))}",  # tests/ is always copied
        f"pytest_add_cli_args = {_toml(args)}",
        f"pytest_add_cli_args_test_selection = {_toml(list(module.tests))}",
        "",
        "[tool.pytest.ini_options]",
        *(f"{key} = {_toml(value)}" for key, value in pytest_options["ini_options"].items()),
    ]
    return "\n".join(lines) + "\n"


def _prepare(name: str, module: Module) -> Path:
    """A fresh working directory: links to the sources, this module's configuration."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for top in ("gateway", *ALSO_COPY):
        (work / top).symlink_to(REPO / top, target_is_directory=True)
    (work / "pyproject.toml").write_text(_pyproject(module))
    return work


def _mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    command = [sys.executable, "-m", "mutmut", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        return done.stdout
    with log.open("w") as out:
        code = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=out).returncode
    if code != 0:
        raise SystemExit(f"mutmut failed in {work} (exit {code}); see {log}")
    return ""


_RESULT = re.compile(r"^\s+(\S+): (.+)$")


def run_module(name: str) -> Counter[str]:
    """Mutate one module, run its tests against every mutant; the count per status."""
    work = _prepare(name, MODULES[name])
    print(f"--- {name}: mutmut run (log: {work / 'mutmut.log'})", flush=True)
    _mutmut(work, "run", "--max-children", str(JOBS), log=work / "mutmut.log")
    statuses: dict[str, str] = {}
    for line in _mutmut(work, "results", "--all", "true").splitlines():
        if found := _RESULT.match(line):
            statuses[found[1]] = found[2]
    survivors = sorted(m for m, status in statuses.items() if status not in DETECTED)
    # Names only: `mutmut show <name>` in the module's directory prints one's diff.
    (work / "survivors.txt").write_text("".join(f"{statuses[m]}: {m}\n" for m in survivors))
    counts = Counter(statuses.values())
    print(f"{name}: {sum(counts.values())} mutants, score {_score(counts)}, {dict(counts)}")
    for mutant in survivors:
        print(f"    {statuses[mutant]}: {mutant}")
    return counts


DETECTED = ("killed", "timeout")  # a test failed, or hung until mutmut's time-out


def _score(counts: Counter[str]) -> str:
    """The share of mutants detected."""
    total = sum(counts.values())
    return f"{100 * sum(counts[s] for s in DETECTED) / total:.1f}%" if total else "-"


def main(names: list[str]) -> None:
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        raise SystemExit(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    results = {name: run_module(name) for name in names or MODULES}
    print("\nmodule       mutants  killed  survived  no tests  timeout  score")
    for name, counts in results.items():
        print(
            f"{name:<12} {sum(counts.values()):>7}  {counts['killed']:>6}  "
            f"{counts['survived']:>8}  {counts['no tests']:>8}  {counts['timeout']:>7}  "
            f"{_score(counts)}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
