"""The chart's copies of project files (Helm reads files only from inside the chart) are
the project's current ones: `make helm-sync` refreshes them."""

from __future__ import annotations

from tests.support.helm import CHART
from worker.profiles import REPO_ROOT
from worker.tiny_model import CHAT_TEMPLATE

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules"
STALE = "stale copy in helm/vlm-serve/files: run `make helm-sync`"


def test_the_charts_nginx_template_is_the_projects() -> None:
    ours = (REPO_ROOT / "nginx" / "nginx.conf.template").read_text()
    assert (CHART / "files" / "nginx.conf.template").read_text() == ours, STALE


def test_the_charts_alert_rules_are_the_projects() -> None:
    copies = {p.name: p.read_text() for p in (CHART / "files" / "alerts").glob("*.yml")}
    originals = {p.name: p.read_text() for p in RULES.glob("*.yml")}
    if originals:
        assert copies == originals, STALE
    else:
        # Until the project has rules, the chart ships a placeholder, and says so.
        assert list(copies) == ["placeholder.yml"]
        assert "PLACEHOLDER" in copies["placeholder.yml"]


def test_the_charts_tiny_chat_template_is_the_models() -> None:
    """Gateways in front of triton-cpu-tiny workers render prompts with it."""
    copy = (CHART / "files" / "chat-templates" / "tiny-qwen3-vl.jinja").read_text()
    assert copy == CHAT_TEMPLATE, STALE
