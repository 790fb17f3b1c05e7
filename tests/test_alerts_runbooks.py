"""Every alert's runbook_url points at a section of docs/runbooks.md that exists and
says what on-call needs: symptom, dashboard, commands, causes, fixes."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from deploy.dashboards.generate import DASHBOARDS
from deploy.prometheus.check import alerts
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
