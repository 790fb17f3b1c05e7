"""The shipped Prometheus rules: they parse, their promtool unit tests pass, every alert
has a firing, a quiet and a targets-vanished case (real promtool, Debian's 2.42), every
aggregation keeps namespace and release apart, every summary carries its value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.prometheus.check import alerts, check_rules, promtool_tests, rule_files, run_tests

ALERT_NAMES = [rule["alert"] for rule in alerts()]
# Alerts that still page when their targets are gone; the others must be covered by one.
COVERING = {
    "VlmNoHealthyWorker",
    "VlmNoGatewayUp",
    "VlmFrontDoorProbeMissing",
    "VlmInteractionSpoolLostWithPod",
    "VlmBatchRunnerMissing",
}
# Fires always, by design (a dead man's switch): it has no quiet or vanished case.
ALWAYS = {"Watchdog"}
# Rules on kube-state-metrics series: those carry namespace, never our release label.
KUBE_STATE = re.compile(r"\bkube_")


def _groups() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for path in promtool_tests():
        for group in yaml.safe_load(path.read_text())["tests"]:
            groups[group["name"]] = group
    return groups


def _expectations(group: dict[str, Any], alert: str) -> list[list[Any]]:
    return [t["exp_alerts"] for t in group["alert_rule_test"] if t["alertname"] == alert]


def _all_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_rules_parse() -> None:
    result = check_rules()
    assert result.returncode == 0, result.stdout + result.stderr
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == len(_all_rules())


def test_promtool_unit_tests_pass() -> None:
    result = run_tests()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(promtool_tests())


def test_alerts_are_unique_and_labelled() -> None:
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)) == 43
    for rule in alerts():
        severities = {"none"} if rule["alert"] in ALWAYS else {"critical", "warning"}
        assert rule["labels"]["severity"] in severities, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_summary_carries_the_value(rule: dict[str, Any]) -> None:
    """On-call reads how bad it is in the page itself, not only that it is bad."""
    if rule["alert"] not in ALWAYS:
        assert "$value" in rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize(
    "rule", _all_rules(), ids=lambda rule: str(rule.get("alert") or rule.get("record"))
)
def test_every_aggregation_keeps_releases_apart(rule: dict[str, Any]) -> None:
    """One Prometheus, several releases: every `by`/`on` grouping names namespace (and
    release, but on kube-state-metrics series, which carry no release label), so a
    healthy release never hides another's outage. `on ()` only joins absent()."""
    expr = str(rule["expr"])
    for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        labels = {label.strip() for label in clause.split(",") if label.strip()}
        if not labels:
            assert "absent(" in expr, expr
            continue
        assert "namespace" in labels, (clause, expr)
        # One target (instance) or worker is in one release already.
        if not KUBE_STATE.search(expr) and not labels & {"le", "instance", "worker"}:
            assert "release" in labels, (clause, expr)
    # No aggregation without a grouping at all (`sum(x)` sums every release together).
    assert not re.search(r"\b(?:sum|max|min|avg|count)\s*\(", expr), expr


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_has_fires_quiet_and_vanished_cases(alert: str) -> None:
    groups = _groups()
    if alert in ALWAYS:
        fires = groups.get(f"{alert}: fires")
        assert fires, alert
        assert any(_expectations(fires, alert)), alert
        return
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


def test_triton_failure_ratio_leaves_clients_leaving_out() -> None:
    """CANCELED is Triton counting a client that left: with it in the ratio, the quiet
    case (clients abandoning streams, the worker healthy) pages."""
    shipped = next(r for r in alerts() if r["alert"] == "VlmTritonInferenceFailing")["expr"]
    assert 'reason!="CANCELED"' in shipped
    counting_all = shipped.replace(', reason!="CANCELED"', "")
    triton = [p for p in promtool_tests() if p.name == "triton.yml"]
    result = run_tests(triton, exprs={"VlmTritonInferenceFailing": counting_all})
    assert result.returncode != 0
    assert "VlmTritonInferenceFailing: quiet" in result.stdout + result.stderr
    assert "VlmTritonInferenceFailing: fires" not in result.stdout + result.stderr


def test_worker_alerts_see_a_release_of_triton_workers_alone() -> None:
    """A release whose pools are all Triton (gpu-triton) has no vllm-worker target: the
    worker availability alerts read both worker jobs, or they page around the clock (the
    triton.yml cases fail with the vllm-worker-only expressions)."""
    before = (
        '(sum by (namespace, release) (up{job="vllm-worker"}) or on (namespace, release) '
        '0 * count by (namespace, release) (up{job="gateway"})) == 0 '
        'or on () 0 * absent(up{job="vllm-worker"})'
    )
    exprs = {"VlmNoHealthyWorker": before}
    triton = [p for p in promtool_tests() if p.name == "triton.yml"]
    result = run_tests(triton, exprs=exprs)
    assert result.returncode != 0
    assert "VlmNoHealthyWorker: quiet with Triton workers alone" in result.stdout + result.stderr


def test_test_files_name_only_shipped_rules() -> None:
    for path in promtool_tests():
        doc = yaml.safe_load(path.read_text())
        for rule_file in doc["rule_files"]:
            assert (path.parent / rule_file).resolve().exists(), (path, rule_file)
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                assert case["alertname"] in ALERT_NAMES, (path.name, group["name"])
    assert Path(promtool_tests()[0]).parent.name == "tests"
