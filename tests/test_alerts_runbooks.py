"""Every alert's runbook_url points at a section of docs/runbooks.md that exists and
says what on-call needs: symptom, dashboard, commands (Kubernetes ones), causes, fixes;
every alert's dashboard link opens a panel that shows what it reads; the canary rollback
command is exact (the chart renders it without the canary)."""

from __future__ import annotations

import itertools
import re
import shlex
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from deploy.dashboards.generate import DASHBOARDS
from deploy.prometheus.check import alerts
from tests.support.helm import find, profile_values, render
from worker.profiles import REPO_ROOT

RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
PARTS = ("**Symptom**", "**Dashboard**", "**Commands**", "**Likely causes**", "**Fixes**")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict[str, str]:
    text = RUNBOOKS.read_text()
    found: dict[str, str] = {}
    for chunk in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = chunk.partition("\n")
        found[slug(heading)] = body
    return found


def test_slug_matches_github() -> None:
    assert slug("VlmNoHealthyWorker") == "vlmnohealthyworker"
    assert slug("Log at scale: partitions") == "log-at-scale-partitions"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_runbook_url_anchor_exists(rule: dict[str, object]) -> None:
    annotations = rule["annotations"]
    assert isinstance(annotations, dict)
    url = urlparse(annotations["runbook_url"])
    assert url.scheme == "https"
    assert url.path.endswith("/docs/runbooks.md")
    assert url.fragment in sections(), f"{rule['alert']}: no section #{url.fragment}"
    assert url.fragment == slug(str(rule["alert"]))


@pytest.mark.parametrize("anchor", sorted(sections()))
def test_runbook_section_is_complete(anchor: str) -> None:
    body = sections()[anchor]
    for part in PARTS:
        assert part in body, f"#{anchor} lacks {part}"
    assert "```" in body, f"#{anchor} has no commands to copy"
    # The dashboard to open is one that exists.
    dashboard_line = body.split("**Dashboard**", 1)[1].split("\n- **", 1)[0]
    names = {spec.title.split(" / ", 1)[1] for spec in DASHBOARDS}
    assert any(name in dashboard_line for name in names), f"#{anchor}: {dashboard_line!r}"


def test_every_section_belongs_to_an_alert() -> None:
    assert set(sections()) == {slug(str(rule["alert"])) for rule in alerts()}


@pytest.mark.parametrize("anchor", sorted(sections()))
def test_runbook_gives_kubernetes_commands(anchor: str) -> None:
    """On-call runs the chart: every section says what to type against the cluster, and
    the spool is in a pod at /var/spool/vlm-serve, not in a local .run/."""
    body = sections()[anchor]
    assert "kubectl" in body or "helm " in body, f"#{anchor} has no Kubernetes command"
    assert ".run/interactions" not in body, f"#{anchor} points at a local spool"
    if "spool" in body.split("**Commands**", 1)[1]:
        assert "/var/spool/vlm-serve" in body or "gateway.interactions" in body, anchor


PROMQL_WORDS = frozenset(
    {"by", "on", "and", "or", "unless", "ignoring", "without", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)


def _metrics(expr: str) -> set[str]:
    """Series names an expression reads; an SLO's recorded series count as that SLO."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)  # strings, matchers, ranges
    bare = re.sub(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = {
        name
        for name in re.findall(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", bare)
        if name not in PROMQL_WORDS
    }
    return {re.sub(r"^(vlm:slo_\w+?):.*", r"\1", name) for name in names}


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_dashboard_link_opens_a_panel_that_shows_the_alert(rule: dict[str, Any]) -> None:
    if rule["alert"] == "Watchdog":
        return
    link = urlparse(rule["annotations"]["dashboard"])
    uid = link.path.removeprefix("d/")
    spec = next((d for d in DASHBOARDS if d.uid == uid), None)
    assert spec is not None, f"{rule['alert']}: no dashboard {uid}"
    query = parse_qs(link.query)
    panel_id = int(query["viewPanel"][0])
    assert 1 <= panel_id <= len(spec.panels), rule["alert"]
    panel = spec.panels[panel_id - 1]
    shown = set().union(*(_metrics(q.expr) for q in panel.queries))
    assert _metrics(str(rule["expr"])) & shown, (rule["alert"], panel.title)
    # It opens on the alert's own namespace (and release, where the alert has one).
    assert query["var-namespace"] == ["{{ $labels.namespace }}"], rule["alert"]


def test_canary_rollback_is_exact() -> None:
    """The runbook's rollback, applied to a canary install as `--reuse-values` would, leaves
    no canary Deployment and no canary pool in the gateways' configuration."""
    body = sections()["vlmcanaryerrorrateabovestable"]
    command = next(line for line in body.splitlines() if "helm upgrade" in line)
    words = shlex.split(command.strip())
    assert "--reuse-values" in words
    overrides: dict[str, Any] = {}
    for flag, value in itertools.pairwise(words):
        if flag == "--set":
            path, _, raw = value.partition("=")
            node = overrides
            *parents, leaf = path.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = {"true": True, "false": False}.get(raw, raw)
    before = render(profile_values("canary"))
    after = render(profile_values("canary", overrides))
    canary = [d for d in find(before, "Deployment") if d["metadata"]["name"].endswith("-canary")]
    assert canary, "the canary profile renders a canary Deployment"
    assert not [d for d in find(after, "Deployment") if d["metadata"]["name"].endswith("-canary")]
    gateway = next(
        d for d in find(after, "Deployment") if d["metadata"]["name"].endswith("-gateway")
    )
    assert "canary" not in str(gateway["spec"]["template"]["spec"]["containers"][0]["env"])
