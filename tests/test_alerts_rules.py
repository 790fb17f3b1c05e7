"""The shipped Prometheus rules: they parse, their promtool unit tests pass, and every
alert has a firing, a quiet and a targets-vanished case (real promtool, Debian's 2.42)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.prometheus.check import alerts, check_rules, promtool_tests, run_tests

ALERT_NAMES = [rule["alert"] for rule in alerts()]
# Alerts that still page when every target is gone; the others must be covered by one.
COVERING = {"VlmNoHealthyWorker", "VlmNoGatewayUp", "VlmBatchRunnerMissing"}


def _groups() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for path in promtool_tests():
        for group in yaml.safe_load(path.read_text())["tests"]:
            groups[group["name"]] = group
    return groups


def _expectations(group: dict[str, Any], alert: str) -> list[list[Any]]:
    return [t["exp_alerts"] for t in group["alert_rule_test"] if t["alertname"] == alert]


def test_rules_parse() -> None:
    result = check_rules()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 19 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_tests()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(promtool_tests())


def test_alerts_are_unique_and_labelled() -> None:
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)) == 21
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_has_fires_quiet_and_vanished_cases(alert: str) -> None:
    groups = _groups()
    fires, quiet, vanished = (
        groups.get(f"{alert}: {case}") for case in ("fires", "quiet", "vanished")
    )
    assert fires, f"{alert}: no fires case"
    assert quiet, f"{alert}: no quiet case"
    assert vanished, f"{alert}: no vanished case"
    assert any(_expectations(fires, alert)), f"{alert}: the fires case expects no alert"
    # Quiet at the end (the burn-rate case first shows a burst firing, then resetting).
    assert _expectations(quiet, alert)[-1] == [], f"{alert}: the quiet case ends firing"
    # Vanished: every input series ends stale (its target left discovery)...
    assert all(s["values"].split()[-1] == "stale" for s in vanished["input_series"])
    # ...and someone is still paged: the alert itself, or the one that covers it.
    covering = COVERING if alert not in COVERING else {alert}
    assert any(any(_expectations(vanished, name)) for name in covering), alert
    if alert not in COVERING:
        assert _expectations(vanished, alert) == [[]], f"{alert} should be blind, not firing"


def test_bare_sum_of_up_fails_the_vanished_case() -> None:
    """The anchor defect (`sum(up{...}) == 0` never fires once targets vanished) is what
    the vanished case catches: with that expression the unit tests fail."""
    bare = 'sum(up{job="vllm-worker"}) == 0'
    availability = [p for p in promtool_tests() if p.name == "availability.yml"]
    result = run_tests(availability, exprs={"VlmNoHealthyWorker": bare})
    assert result.returncode != 0
    assert "VlmNoHealthyWorker: vanished" in result.stdout + result.stderr
    assert "VlmNoHealthyWorker: fires" not in result.stdout + result.stderr


def test_test_files_name_only_shipped_rules() -> None:
    for path in promtool_tests():
        doc = yaml.safe_load(path.read_text())
        for rule_file in doc["rule_files"]:
            assert (path.parent / rule_file).resolve().exists(), (path, rule_file)
        for group in doc["tests"]:
            for case in group["alert_rule_test"]:
                assert case["alertname"] in ALERT_NAMES, (path.name, group["name"])
    assert Path(promtool_tests()[0]).parent.name == "tests"
