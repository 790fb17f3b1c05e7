"""The dashboards as plain data, so tests can read every query without Grafana."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Grafana fills this in; tests substitute a duration (see `concrete`).
RATE = "$__rate_interval"

# Why a panel cannot be checked against the live stack on a CPU-only machine.
NEEDS_GPU = "needs an NVIDIA GPU and the DCGM exporter (not checkable on this machine)"
NEEDS_REPLICA = "needs a MySQL replica (not checkable on this machine)"


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


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def concrete(expr: str, rate_window: str = "1m") -> str:
    """The query as Prometheus receives it from Grafana, with a fixed rate window."""
    return expr.replace(RATE, rate_window)


def p_quantile(quantile: float, metric: str, by: str, selector: str = "") -> str:
    """histogram_quantile over a rate window: never a lifetime average."""
    return (
        f"histogram_quantile({quantile}, sum by (le, {by}) "
        f"(rate({metric}_bucket{selector}[{RATE}])))"
    )
