"""The dashboards as plain data, so tests can read every query without Grafana."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

# Grafana fills this in; tests substitute a duration (see `concrete`).
RATE = "$__rate_interval"

# Why a panel cannot be checked against the live stack on a CPU-only machine.
NEEDS_GPU = "needs an NVIDIA GPU and the DCGM exporter (not checkable on this machine)"
NEEDS_REPLICA = "needs a MySQL replica (not checkable on this machine)"
NEEDS_KUBE_STATE = "needs kube-state-metrics in a Kubernetes cluster (not checkable here)"
NEEDS_OFFICIAL_TRITON_BACKEND = (
    "needs NVIDIA's vLLM backend with REPORT_CUSTOM_METRICS (the chart's gpu-triton profile); "
    "our CPU model exports only vLLM's scheduler gauges"
)

# Exporters the Helm chart does not install: a panel that reads one says so.
REDIS_EXPORTER = (
    "the Redis exporter, scraped as job=redis (`make observe` runs Debian's "
    "prometheus-redis-exporter; under Helm, install one, e.g. the prometheus-community "
    "prometheus-redis-exporter chart, pointed at the Redis the gateways use)"
)
MYSQLD_EXPORTER = (
    "the mysqld exporter, scraped as job=mysql (`make observe` runs Debian's "
    "prometheus-mysqld-exporter; under Helm, install one, e.g. the prometheus-community "
    "prometheus-mysql-exporter chart, pointed at the interaction-log database)"
)
NGINX_EXPORTER = (
    "the Nginx exporter on Nginx's stub_status, scraped as job=nginx (`make observe` runs "
    "Debian's prometheus-nginx-exporter; under Helm, add it as a sidecar of the chart's "
    "Nginx, or read your ingress controller's own metrics)"
)

# Dashboard variables; each query selects by them. "All" is ".*", which also matches
# series without the label (a local stack has no namespace or release).
NAMESPACE = 'namespace=~"$namespace"'
RELEASE = 'release=~"$release"'
REL = f"{NAMESPACE}, {RELEASE}"
GATEWAY_SCOPE = f'job="gateway", {REL}, instance=~"$replica"'
# Worker scrape jobs: vLLM's OpenAI server, and Triton's own metrics port.
WORKER_JOBS = "vllm-worker|triton-worker"
WORKER_SCOPE = f'job=~"{WORKER_JOBS}", {REL}, pool=~"$pool", instance=~"$worker"'
TRITON = 'job="triton-worker"'
VARIABLE_NAMES = ("namespace", "release", "pool", "worker", "replica")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Literal["timeseries", "stat"] = "timeseries"
    # Set when the panel's series cannot exist on this machine (GPU, replica): the live
    # test skips it and only checks that its queries parse.
    not_here: str | None = None
    width: int = 12
    # Colour steps, lowest first: ((None, "red"), (1, "green")) makes 0 red.
    thresholds: tuple[tuple[float | None, str], ...] = ()
    # The exporter its series come from, when the Helm chart does not install it.
    exporter: str | None = None
    max: float | None = None


@dataclass(frozen=True)
class Variable:
    """A query variable: label values of ``label`` on ``series`` (multi, with All)."""

    name: str
    label: str
    series: str
    title: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = field(default=())

    def panel_id(self, title: str) -> int:
        """Grafana's panel id (for ?viewPanel= links): its place, from 1."""
        return 1 + [panel.title for panel in self.panels].index(title)


# namespace -> release -> pool -> worker, and the gateway replicas: each narrows the next.
SCOPE = (
    Variable("namespace", "namespace", f'up{{job=~"gateway|{WORKER_JOBS}"}}', "Namespace"),
    Variable("release", "release", f'up{{job=~"gateway|{WORKER_JOBS}", {NAMESPACE}}}', "Release"),
    Variable("pool", "pool", f'up{{job=~"{WORKER_JOBS}", {REL}}}', "Pool"),
    Variable("worker", "instance", f'up{{job=~"{WORKER_JOBS}", {REL}, pool=~"$pool"}}', "Worker"),
    Variable("replica", "instance", f'up{{job="gateway", {REL}}}', "Gateway replica"),
)


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def concrete(expr: str, rate_window: str = "1m") -> str:
    """The query as Prometheus receives it from Grafana with every variable on All, and a
    fixed rate window."""
    expr = expr.replace(RATE, rate_window)
    return re.sub(r"\$(?:" + "|".join(VARIABLE_NAMES) + r")\b", ".*", expr)


def p_quantile(quantile: float, metric: str, by: str, selector: str = "") -> str:
    """histogram_quantile over a rate window: never a lifetime average. ``selector``: label
    matchers, without braces."""
    matchers = f"{{{selector}}}" if selector else ""
    return (
        f"histogram_quantile({quantile}, sum by (le, {by}) "
        f"(rate({metric}_bucket{matchers}[{RATE}])))"
    )
