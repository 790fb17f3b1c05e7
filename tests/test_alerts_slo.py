"""The SLO rules: generated from deploy/prometheus/slo.py and committed as generated, and
every series they read is one the gateway or the front door's log exporter does export
(a renamed metric would leave an SLO reading "no data" through any outage)."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from deploy.prometheus import slo
from gateway.metrics import Metrics
from worker.profiles import REPO_ROOT

MTAIL = REPO_ROOT / "deploy" / "prometheus" / "mtail" / "nginx_front_door.mtail"


def test_committed_rules_match_the_generator() -> None:
    assert slo.stale() == [], "run: .venv/bin/python -m deploy.prometheus.slo"
    assert slo.main(["--check"]) == 0


def _exported() -> dict[str, set[str]]:
    """Series name -> label names, as a fresh gateway exports them (plus histogram parts)."""
    metrics = Metrics()
    metrics.answer_seconds.labels("/v1/vqa", "miss").observe(1)
    metrics.ttft.labels("/v1/chat/completions", "hit").observe(1)
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    # mtail's counter: its name and `by` labels from the program.
    program = MTAIL.read_text()
    name, labels = re.search(r"counter (\w+) by ([\w, ]+)", program).groups()  # type: ignore[union-attr]
    found[name] = {label.strip() for label in labels.split(",")}
    return found


def test_every_slo_selector_names_an_exported_series() -> None:
    exported = _exported()
    for rule in [r for doc in slo.documents().values() for g in doc["groups"] for r in g["rules"]]:
        for name, selector in re.findall(r"([a-z_]+)\{([^}]*)\}", rule["expr"]):
            assert name in exported, (name, rule.get("record") or rule.get("alert"))
            for label in re.findall(r"(\w+)\s*(?:=~|!=|=)", selector):
                assert label in exported[name] | {"job"}, (name, label)


def test_the_error_ratio_reads_one_when_nothing_succeeds() -> None:
    """Written as bad/total (never 1 - good/total, which is empty without a good series)."""
    expr = slo.recording_rules(slo.AVAILABILITY, ("5m",))[2]["expr"]
    assert expr.startswith("(clamp_min(vlm:slo_availability:bad_rate5m, 0) or 0 *")
    assert "good" not in expr
