"""The dashboards: committed JSON equals the generator's output, every query parses
(promtool, as recording rules), latency panels are rates, vLLM names are real ones."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.dashboards.build import to_json
from deploy.dashboards.generate import DASHBOARDS, path_of, stale
from deploy.dashboards.spec import Dashboard, concrete
from deploy.prometheus.check import promtool
from worker.profiles import REPO_ROOT

VLLM_METRICS_DIR = REPO_ROOT / ".venv-worker" / "lib" / "python3.11" / "site-packages" / "vllm"

ALL_EXPRS = [
    (spec.uid, panel.title, query.expr)
    for spec in DASHBOARDS
    for panel in spec.panels
    for query in panel.queries
]


def test_committed_json_matches_generator() -> None:
    assert stale() == [], "run: .venv/bin/python -m deploy.dashboards.generate"


def test_a_changed_panel_is_noticed() -> None:
    spec = DASHBOARDS[0]
    changed = dataclasses.replace(spec.panels[0], title="Something else")
    edited = Dashboard(spec.uid, spec.title, spec.description, (changed, *spec.panels[1:]))
    assert to_json(edited) != path_of(spec).read_text()


def test_five_dashboards_with_unique_uids() -> None:
    uids = [spec.uid for spec in DASHBOARDS]
    assert len(set(uids)) == 5
    for spec in DASHBOARDS:
        board = json.loads(path_of(spec).read_text())
        assert board["uid"] == spec.uid
        exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
        assert exprs == [q.expr for p in spec.panels for q in p.queries]


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool has no bare-query check: each query becomes a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": concrete(expr)}
        for i, (_, _, expr) in enumerate(ALL_EXPRS)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_refuses_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    rule = {"record": "dashboard:bad", "expr": "sum by (le (rate(x[1m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [rule]}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize(("uid", "title", "expr"), ALL_EXPRS)
def test_no_lifetime_averages(uid: str, title: str, expr: str) -> None:
    """_sum, _count and _bucket series only ever inside rate()/increase() over a window."""
    for match in re.finditer(r"[\w:]+_(?:sum|count|bucket)\b", expr):
        before = expr[: match.start()]
        assert before.endswith(("rate(", "increase(")), f"{uid} / {title}: {match.group()}"
    if "_bucket" in expr:
        assert expr.startswith("histogram_quantile("), f"{uid} / {title}"


def test_gpu_panels_are_marked() -> None:
    for spec in DASHBOARDS:
        board = json.loads(path_of(spec).read_text())
        for panel, built in zip(spec.panels, board["panels"], strict=True):
            uses_dcgm = any("DCGM_" in q.expr for q in panel.queries)
            assert uses_dcgm <= (panel.not_here is not None), panel.title
            if panel.not_here:
                assert "Not checked by the live test" in built["description"]


def _vllm_names() -> set[str]:
    names: set[str] = set()
    for path in (VLLM_METRICS_DIR / "v1" / "metrics").glob("*.py"):
        names |= set(re.findall(r'"(vllm:[a-z_]+)"', path.read_text()))
    return names


def test_vllm_names_exist_in_the_installed_engine() -> None:
    """production-stack's dashboards went blank after a vLLM rename: check ours against
    the vLLM in .venv-worker."""
    known = _vllm_names()
    assert "vllm:num_requests_waiting" in known
    rules = (REPO_ROOT / "deploy" / "prometheus" / "rules" / "vlm-alerts.yml").read_text()
    used = set(re.findall(r"vllm:[a-z_]+", " ".join(e for _, _, e in ALL_EXPRS) + rules))
    suffixes = re.compile(r"_(total|bucket|sum|count)$")
    unknown = {name for name in used if name not in known and suffixes.sub("", name) not in known}
    assert not unknown, f"not in the installed vLLM: {sorted(unknown)}"
