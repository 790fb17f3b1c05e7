"""promtool check rules + promtool test rules on the shipped rules.

python -m deploy.prometheus.check   # exit 0 when every rule parses and every test passes

promtool 2.42 compares annotations in every expected alert; the test files assert
expressions and labels, and tests/test_alerts_runbooks.py checks annotations. So the
tests run against a copy of the rules without annotations, in a temporary tree with
the same layout (the test files name ../rules/*.yml).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
TESTS_DIR = HERE / "tests"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        raise FileNotFoundError("promtool is missing: run `make observe-tools`")
    return found


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def promtool_tests() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yml"))


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule in the shipped rule files."""
    found: list[dict[str, Any]] = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if "alert" in rule]
    return found


def _without_annotations(text: str, exprs: dict[str, str]) -> str:
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            if rule.get("alert") in exprs:
                rule["expr"] = exprs[rule["alert"]]
    return yaml.safe_dump(doc, sort_keys=False)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def check_rules() -> subprocess.CompletedProcess[str]:
    return run([promtool(), "check", "rules", *map(str, rule_files())])


def run_tests(
    tests: list[Path] | None = None, exprs: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """promtool test rules; `exprs` replaces alerts' expressions (to show a test can fail)."""
    with tempfile.TemporaryDirectory(prefix="vlm-promtool-") as tmp:
        (Path(tmp) / "rules").mkdir()
        (Path(tmp) / "tests").mkdir()
        for path in rule_files():
            text = _without_annotations(path.read_text(), exprs or {})
            (Path(tmp) / "rules" / path.name).write_text(text)
        copies = []
        for path in tests or promtool_tests():
            copy = Path(tmp) / "tests" / path.name
            shutil.copy(path, copy)
            copies.append(str(copy))
        # One promtool per file, side by side: the files are independent, and the SLO
        # files alone take most of a minute.
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            results = list(pool.map(lambda copy: run([promtool(), "test", "rules", copy]), copies))
        return subprocess.CompletedProcess(
            ["promtool", "test", "rules", *copies],
            max(result.returncode for result in results),
            "".join(result.stdout for result in results),
            "".join(result.stderr for result in results),
        )


def main() -> int:
    status = 0
    for result in (check_rules(), run_tests()):
        sys.stdout.write(result.stdout + result.stderr)
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
