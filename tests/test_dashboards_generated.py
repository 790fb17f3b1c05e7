"""The dashboards: committed JSON equals the generator's output, every query parses
(promtool, as recording rules), latency panels are rates, vLLM names are real ones; the
overview is scoped by namespace, release, pool, worker and replica variables, colours "0
up" red, shows the error budget, keeps one unit per panel and the 24-column grid; panels
on exporters the chart does not install say which one they need."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.dashboards.build import build, to_json
from deploy.dashboards.generate import DASHBOARDS, path_of, stale
from deploy.dashboards.overview import OVERVIEW
from deploy.dashboards.service import WORKERS
from deploy.dashboards.spec import VARIABLE_NAMES, Dashboard, concrete
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


# Gauges whose names end like a histogram's count.
GAUGES_NAMED_COUNT = {"nv_inference_pending_request_count"}


@pytest.mark.parametrize(("uid", "title", "expr"), ALL_EXPRS)
def test_no_lifetime_averages(uid: str, title: str, expr: str) -> None:
    """_sum, _count and _bucket series only ever inside rate()/increase() over a window."""
    for match in re.finditer(r"[\w:]+_(?:sum|count|bucket)\b", expr):
        if match.group() in GAUGES_NAMED_COUNT:
            continue
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
            assert built["id"] == spec.panel_id(panel.title)


def _vllm_names() -> set[str]:
    names: set[str] = set()
    for path in (VLLM_METRICS_DIR / "v1" / "metrics").glob("*.py"):
        names |= set(re.findall(r'"(vllm:[a-z0-9_]+)"', path.read_text()))
    return names


def test_vllm_names_exist_in_the_installed_engine() -> None:
    """production-stack's dashboards went blank after a vLLM rename: check ours against
    the vLLM in .venv-worker."""
    known = _vllm_names()
    assert "vllm:num_requests_waiting" in known
    rules = (REPO_ROOT / "deploy" / "prometheus" / "rules" / "vlm-alerts.yml").read_text()
    used = set(re.findall(r"vllm:[a-z0-9_]+", " ".join(e for _, _, e in ALL_EXPRS) + rules))
    suffixes = re.compile(r"_(total|bucket|sum|count)$")
    unknown = {name for name in used if name not in known and suffixes.sub("", name) not in known}
    assert not unknown, f"not in the installed vLLM: {sorted(unknown)}"


def test_panels_stay_on_the_grid() -> None:
    """Grafana's grid is 24 columns: a panel past it is drawn cut or moved."""
    for spec in DASHBOARDS:
        for panel in build(spec)["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (spec.uid, panel["title"], grid)


def test_overview_is_scoped_by_variables() -> None:
    board = build(OVERVIEW)
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", *VARIABLE_NAMES]
    for panel in OVERVIEW.panels:
        for query in panel.queries:
            assert "$namespace" in query.expr, (panel.title, query.expr)
    # "All" is a regex that also matches series without the label (a local stack).
    assert all(v.get("allValue") == ".*" for v in board["templating"]["list"][1:])
    assert concrete('up{namespace=~"$namespace", pool=~"$pool"}') == (
        'up{namespace=~".*", pool=~".*"}'
    )


def test_zero_up_is_red() -> None:
    for title in ("Workers up per pool", "Workers the gateways reach", "Gateways up"):
        panel = build(OVERVIEW)["panels"][OVERVIEW.panel_id(title) - 1]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0] == {"color": "red", "value": None}, title
        assert steps[1] == {"color": "green", "value": 1}, title


def test_error_budget_left_is_shown() -> None:
    panel = OVERVIEW.panels[OVERVIEW.panel_id("Error budget left (30 days)") - 1]
    exprs = " ".join(q.expr for q in panel.queries)
    for slo in ("availability", "ttft", "answer_latency", "hit_latency"):
        assert f"vlm:slo_{slo}:budget_left30d" in exprs


def test_one_unit_per_panel() -> None:
    """Counts and 0-1 fractions, or 0-100 and 0-1, never share an axis."""
    for spec in DASHBOARDS:
        for panel in spec.panels:
            exprs = [q.expr for q in panel.queries]
            if any("kv_cache_usage_perc" in e or "FB_USED" in e for e in exprs):
                assert panel.unit == "percentunit", (spec.uid, panel.title)
                assert len(exprs) == 1, (spec.uid, panel.title)
            if any("DCGM_FI_DEV_GPU_UTIL" in e for e in exprs):
                assert (panel.unit, len(exprs)) == ("percent", 1), (spec.uid, panel.title)


def test_exporter_panels_say_what_they_need() -> None:
    """Under Helm the chart installs no Redis, mysqld or Nginx exporter: a panel on their
    series says which one to add instead of showing "No data" without a word."""
    exporter_series = re.compile(r"\b(redis|mysql|nginx)_\w+")
    built = {spec.uid: build(spec)["panels"] for spec in DASHBOARDS}
    for spec in DASHBOARDS:
        for panel, as_built in zip(spec.panels, built[spec.uid], strict=True):
            if any(exporter_series.search(q.expr) for q in panel.queries):
                assert panel.exporter, (spec.uid, panel.title)
                assert "Needs the" in as_built["description"], (spec.uid, panel.title)


TRITON_JOB = 'job="triton-worker"'


def _triton_exprs(spec: Dashboard) -> dict[str, list[str]]:
    """Panel title -> its queries that read Triton workers' own scrape job."""
    found: dict[str, list[str]] = {}
    for panel in spec.panels:
        exprs = [q.expr for q in panel.queries if TRITON_JOB in q.expr]
        if exprs:
            found[panel.title] = exprs
    return found


def test_triton_workers_on_the_workers_dashboard() -> None:
    """Triton workers under their own names (job triton-worker): up, requests and failures
    by model, the pending queue, queue and compute time per request (a rate over a rate,
    never since start), and vLLM's own series behind Triton."""
    triton = [e for group in _triton_exprs(WORKERS).values() for e in group]
    exprs = " ".join(triton)
    for name in (
        "up",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_pending_request_count",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
    ):
        assert re.search(rf"\b{re.escape(name)}(_bucket)?\{{[^}}]*{TRITON_JOB}", exprs), name
    # Triton counts per model: one server may hold several.
    assert all("model" in e for e in triton if "nv_inference_request_" in e)
    per_request = [
        q.expr for p in WORKERS.panels for q in p.queries if "queue_duration_us" in q.expr
    ]
    assert per_request
    assert all(
        re.search(r"rate\(nv_inference_\w+_duration_us\{.*\}\[.*\) / .*rate\(", e)
        for e in per_request
    )
    # The vLLM panels keep their places: alerts link them by number.
    assert WORKERS.panel_id("Health and breaker state (gateway view)") == 9
    assert WORKERS.panel_id("Restarts, crash loops and OOM kills") == 15


def test_triton_workers_on_the_overview() -> None:
    """A Triton pool counts in "Workers up per pool" and the pool and worker variables, and
    its queue shows beside vLLM's."""
    board = build(OVERVIEW)
    variables = {v["name"]: v["query"] for v in board["templating"]["list"][1:]}
    for name in ("namespace", "release", "pool", "worker"):
        assert "triton-worker" in str(variables[name]), name
    up = OVERVIEW.panels[OVERVIEW.panel_id("Workers up per pool") - 1].queries[0].expr
    assert re.search(r'job=~"[^"]*\btriton-worker\b', up), up
    queues = OVERVIEW.panels[OVERVIEW.panel_id("Queues") - 1]
    assert any("nv_inference_pending_request_count" in q.expr for q in queues.queries)
