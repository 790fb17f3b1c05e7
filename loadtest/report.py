"""make bench, last step: every benchmark's JSON into one report, with plots.

    .venv/bin/python -m loadtest.report [--results loadtest/results] [--out REPORT.md]

Reads the JSON files below from the results folder, draws one PNG per section with
matplotlib (Agg, no display needed) into ``results/plots/``, and writes
``results/REPORT.md``: the machine each figure was measured on, a table of every
target with its verdict (met, **missed**, or not measured yet), then one section per
benchmark. A section whose JSON is absent says "not measured yet" and how to measure
it; a JSON that cannot be read says so in its section, and the rest of the report is
still written.

Producing a section: write the JSON below from your benchmark. Conventions for all:

* ``Stat`` is ``{"median": float, "min": float, "max": float}`` over the repeats of one
  run (a bare number is accepted and shown as a single value). Ratios are computed per
  round, from measurements taken in the same round, then summarised as a Stat.
* Every file has ``"machine"`` (``loadtest.bench_worker.machine_description()``),
  ``"workload"`` (one line: what was sent, at what concurrency) and ``"rounds"``; it may
  have ``"date"`` (ISO 8601) and ``"notes"`` (markdown, printed under the section).
* Any file may have ``"targets": [{"name", "threshold", "measured", "met": bool}]``:
  checks the benchmark made itself; they join the report's target table.

Files and their schemas
-----------------------
``bench-gateway.json`` (``loadtest/bench_gateway.py``): sections "Gateway overhead" and
"Streaming inter-token latency"::

    {"machine", "workload", "rounds", "gateways": int,
     "summary": {"direct" | "nginx" | "nginx+gateway": {
         "request_throughput": Stat, "median_ttft_ms": Stat, "p99_ttft_ms": Stat,
         "median_itl_ms": Stat, "p99_itl_ms": Stat,
         "throughput_ratio": float | Stat, "added_median_ttft_ms": float | Stat}}}

  Targets (issue 3): nginx+gateway ``throughput_ratio`` >= 0.95; ``added_median_ttft_ms``
  <= 5. Optional ``"ratios": {endpoint: {"throughput_ratio": Stat,
  "added_median_ttft_ms": Stat}}`` (per-round pairs) takes precedence when present.

``bench-cache.json`` (cache work, issue 4): section "Answer cache and coalescing"::

    {"machine", "workload", "rounds",
     "hit":  {"throughput_rps": Stat, "median_latency_ms": Stat},
     "miss": {"throughput_rps": Stat, "median_latency_ms": Stat},
     "hit_over_miss_throughput": Stat,
     "lookup_added_median_ms": Stat,      # median miss latency, cache on minus cache off
     "coalescing": {"concurrent_requests": int, "replicas": int,
                    "worker_requests": Stat, "fan_in": Stat}}   # fan_in = concurrent/worker

  Targets: ``hit_over_miss_throughput`` >= 10; ``lookup_added_median_ms`` <= 2.
  ``lookup_added_median_ms`` and ``coalescing`` may be absent (shown as not measured).

``bench-interactions.json`` (interaction log, issue 5): section "Interaction log"::

    {"machine", "workload", "rounds",
     "rows_per_second": {"batched": Stat, "per_row": Stat},
     "batched_over_per_row": Stat,
     "gateway_throughput_rps": {"logging_off": Stat, "logging_on": Stat},
     "logging_on_over_off": Stat}

  Targets: ``batched_over_per_row`` >= 10; ``logging_on_over_off`` >= 0.95 (logging
  costs at most 5 %). The ``gateway_throughput_rps`` pair may be absent.

``bench-replicas.json`` (``loadtest/bench_replicas.py``) and ``bench-workers.json``
(worker pool, issue 7): sections "1 against 2 gateway replicas" and "1 against 2
workers", the same scaling schema::

    {"machine", "workload", "rounds",
     "workloads": {NAME: {"description": str,
                          "throughput_rps": {"1": Stat, "2": Stat},
                          "median_latency_ms": {"1": Stat, "2": Stat},   # optional
                          "p99_latency_ms": {"1": Stat, "2": Stat},      # optional
                          "ratio": Stat,          # throughput with 2 over with 1, per round
                          "x_cache": {"hit": int, "miss": int, ...}}}}   # optional

  ``bench-workers.json`` may add drills (issue 7)::

     "drills": {NAME: {"requests": int, "client_errors": int,
                       "p99_latency_ms": Stat, "description": str}}

  No numeric target is set for these ratios in the issues; drills declare theirs in
  ``"targets"``.

``locust/summary.json`` (``loadtest/run_locust.py``, ``make loadtest``): section "Load
test (Locust)": the locustfile's summary plus ``"thresholds": [{"name", "limit",
"measured", "met"}]``, ``"passed"``, ``"machine"``, ``"duration_s"``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "loadtest" / "results"
NOT_MEASURED = "not measured yet"
COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    min: float | None = None
    max: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Stat:
        if isinstance(value, bool):
            raise ValueError(f"not a measurement: {value!r}")
        if isinstance(value, int | float):
            return cls(float(value))
        if isinstance(value, dict) and "median" in value:
            low, high = value.get("min"), value.get("max")
            return cls(
                float(value["median"]),
                None if low is None else float(low),
                None if high is None else float(high),
            )
        raise ValueError(f"not a measurement: {value!r}")

    def fmt(self, spec: str = ".2f", unit: str = "") -> str:
        text = f"{self.median:{spec}}{unit}"
        if self.min is not None and self.max is not None and self.min != self.max:
            text += f" ({self.min:{spec}}–{self.max:{spec}})"
        return text

    def error_bar(self) -> tuple[float, float]:
        low = self.median - self.min if self.min is not None else 0.0
        high = self.max - self.median if self.max is not None else 0.0
        return (max(0.0, low), max(0.0, high))


def stat_at(data: dict[str, Any], *path: str) -> Stat:
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise KeyError("/".join(path))
        value = value[key]
    return Stat.parse(value)


def optional_stat(data: dict[str, Any], *path: str) -> Stat | None:
    try:
        return stat_at(data, *path)
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Target:
    name: str
    threshold: str
    measured: str
    met: bool | None  # None: not measured yet
    section: str = ""

    @property
    def verdict(self) -> str:
        if self.met is None:
            return NOT_MEASURED
        return "met" if self.met else "**missed**"


def _at_least(name: str, value: Stat | None, limit: float, spec: str = ".2f") -> Target:
    threshold = f"≥ {limit:{spec}}"
    if value is None:
        return Target(name, threshold, "—", None)
    return Target(name, threshold, value.fmt(spec), value.median >= limit)


def _at_most(name: str, value: Stat | None, limit: float, unit: str = "") -> Target:
    threshold = f"≤ {limit:g}{unit}"
    if value is None:
        return Target(name, threshold, "—", None)
    return Target(name, threshold, value.fmt(".2f", unit), value.median <= limit)


@dataclass
class Section:
    key: str
    title: str
    source: str
    how: str  # the command that produces the source
    body: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    figure: str | None = None
    machine: str | None = None
    measured: bool = False


# --- plots ---------------------------------------------------------------------------------


def _bars(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[Stat],
    title: str,
    ylabel: str,
    log: bool = False,
    value_fmt: str = "{:.3g}",
) -> None:
    positions = list(range(len(labels)))
    heights = [v.median for v in values]
    low = [v.error_bar()[0] for v in values]
    high = [v.error_bar()[1] for v in values]
    colours = [COLOURS[i % len(COLOURS)] for i in positions]
    spread = [low, high] if any(low) or any(high) else None
    ax.bar(positions, heights, color=colours, yerr=spread, capsize=4)
    ax.set_xticks(positions, list(labels))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log and all(h > 0 for h in heights):
        ax.set_yscale("log")
    for x, h, up in zip(positions, heights, high, strict=True):
        ax.annotate(
            value_fmt.format(h),
            (x, h + up),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.grid(axis="y", alpha=0.3)


def _grouped(
    ax: Axes,
    groups: Sequence[str],
    series: dict[str, Sequence[Stat]],
    title: str,
    ylabel: str,
    log: bool = False,
) -> None:
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        errors = [[v.error_bar()[0] for v in values], [v.error_bar()[1] for v in values]]
        ax.bar(
            xs,
            [v.median for v in values],
            width,
            yerr=errors if any(any(side) for side in errors) else None,
            capsize=3,
            label=name,
            color=COLOURS[index % len(COLOURS)],
        )
    ax.set_xticks(list(range(len(groups))), list(groups))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _save(figure: Figure, out_dir: Path, name: str, caption: str) -> str:
    figure.suptitle(caption, fontsize=9, y=0.02, va="bottom", color="#555555")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return f"plots/{path.name}"


def _caption(data: dict[str, Any]) -> str:
    rounds = data.get("rounds")
    spread = f"median of {rounds} rounds, whiskers min–max" if rounds else "single run"
    return f"{data.get('machine', 'machine not recorded')}; {spread}"


# --- sections ------------------------------------------------------------------------------

ENDPOINTS = ("direct", "nginx", "nginx+gateway")


def _endpoints(data: dict[str, Any]) -> list[str]:
    summary = data["summary"]
    return [e for e in ENDPOINTS if e in summary] + [e for e in summary if e not in ENDPOINTS]


def _ratio(data: dict[str, Any], endpoint: str, key: str) -> Stat | None:
    return optional_stat(data, "ratios", endpoint, key) or optional_stat(
        data, "summary", endpoint, key
    )


def gateway_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    names = _endpoints(data)
    summary = data["summary"]
    thru = [stat_at(summary, n, "request_throughput") for n in names]
    ttft = [stat_at(summary, n, "median_ttft_ms") for n in names]
    figure = Figure(figsize=(9, 3.8))
    left, right = figure.subplots(1, 2)
    _bars(left, names, thru, "Request throughput", "requests/s")
    _bars(right, names, ttft, "Median time to first token", "ms")
    section.figure = _save(figure, plots, "gateway", _caption(data))
    rows = [
        "| endpoint | req/s | TTFT p50 ms | TTFT p99 ms | throughput / direct "
        "| added TTFT p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        ratio = _ratio(data, name, "throughput_ratio")
        added = _ratio(data, name, "added_median_ttft_ms")
        rows.append(
            f"| {name} | {stat_at(summary, name, 'request_throughput').fmt()} "
            f"| {stat_at(summary, name, 'median_ttft_ms').fmt('.1f')} "
            f"| {stat_at(summary, name, 'p99_ttft_ms').fmt('.1f')} "
            f"| {ratio.fmt('.3f') if ratio else '—'} | {added.fmt('+.1f') if added else '—'} |"
        )
    section.body += rows
    if "ratios" not in data:
        section.body.append(
            "\nRatios are of the medians over the rounds; the file records no per-round "
            "ratios, so no spread is shown for them."
        )
    section.targets += [
        _at_least(
            "Gateway throughput / direct (issue 3)",
            _ratio(data, "nginx+gateway", "throughput_ratio"),
            0.95,
            ".3f",
        ),
        _at_most(
            "Added median TTFT through Nginx + gateway (issue 3)",
            _ratio(data, "nginx+gateway", "added_median_ttft_ms"),
            5.0,
            " ms",
        ),
    ]


def streaming_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    names = _endpoints(data)
    summary = data["summary"]
    median = [stat_at(summary, n, "median_itl_ms") for n in names]
    p99 = [stat_at(summary, n, "p99_itl_ms") for n in names]
    figure = Figure(figsize=(9, 3.8))
    left, right = figure.subplots(1, 2)
    _bars(left, names, median, "Median inter-token latency", "ms")
    _bars(right, names, p99, "p99 inter-token latency", "ms")
    section.figure = _save(figure, plots, "streaming", _caption(data))
    direct_median = median[0].median if names[0] == "direct" else None
    rows = ["| endpoint | ITL p50 ms | ITL p99 ms | ITL p50 / direct |", "|---|---|---|---|"]
    for name, m, p in zip(names, median, p99, strict=True):
        ratio = f"{m.median / direct_median:.3f}" if direct_median else "—"
        rows.append(f"| {name} | {m.fmt('.2f')} | {p.fmt('.1f')} | {ratio} |")
    section.body += rows
    section.body.append(
        "\nThe streams are vLLM's benchmark client's (`openai-chat`, streamed). No numeric "
        "target is set in the issues: the gateway must forward each chunk as the worker "
        "produces it (issue 3), so the median gap should match direct's."
    )


def cache_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    labels = ["miss", "hit"]
    thru = [stat_at(data, "miss", "throughput_rps"), stat_at(data, "hit", "throughput_rps")]
    latency = [
        stat_at(data, "miss", "median_latency_ms"),
        stat_at(data, "hit", "median_latency_ms"),
    ]
    coalescing = data.get("coalescing")
    panels = 3 if isinstance(coalescing, dict) else 2
    figure = Figure(figsize=(4.2 * panels, 3.8))
    axes = figure.subplots(1, panels)
    _bars(axes[0], labels, thru, "Throughput", "requests/s", log=True)
    _bars(axes[1], labels, latency, "Median latency", "ms", log=True)
    ratio = optional_stat(data, "hit_over_miss_throughput")
    lookup = optional_stat(data, "lookup_added_median_ms")
    rows = ["| path | req/s | median latency ms |", "|---|---|---|"]
    rows += [
        f"| {label} | {t.fmt()} | {lat.fmt()} |"
        for label, t, lat in zip(labels, thru, latency, strict=True)
    ]
    if ratio:
        rows.append(f"\nHit throughput / miss throughput: **{ratio.fmt('.1f')}**.")
    if lookup:
        rows.append(f"Cache lookup added to a miss's median latency: **{lookup.fmt('+.2f')} ms**.")
    if isinstance(coalescing, dict):
        concurrent = float(coalescing["concurrent_requests"])
        worker = stat_at(coalescing, "worker_requests")
        fan_in = stat_at(coalescing, "fan_in")
        _bars(
            axes[2],
            ["client requests", "worker requests"],
            [Stat(concurrent), worker],
            f"Coalescing: fan-in {fan_in.median:.0f}:1",
            "requests",
        )
        rows.append(
            f"Coalescing: {concurrent:.0f} identical concurrent requests over "
            f"{coalescing.get('replicas', '?')} replicas reached the worker "
            f"{worker.fmt('.0f')} time(s): fan-in **{fan_in.fmt('.0f')}:1**."
        )
    else:
        rows.append(f"Coalescing fan-in: {NOT_MEASURED}.")
    section.figure = _save(figure, plots, "cache", _caption(data))
    section.body += rows
    section.targets += [
        _at_least("Cache hit throughput / miss throughput (issue 4)", ratio, 10.0, ".1f"),
        _at_most("Cache lookup added to a miss, median (issue 4)", lookup, 2.0, " ms"),
    ]


def interactions_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    rows_s = [
        stat_at(data, "rows_per_second", "per_row"),
        stat_at(data, "rows_per_second", "batched"),
    ]
    gateway = data.get("gateway_throughput_rps")
    panels = 2 if isinstance(gateway, dict) else 1
    figure = Figure(figsize=(4.5 * panels, 3.8))
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _bars(axes[0], ["per-row", "batched"], rows_s, "Rows written per second", "rows/s", log=True)
    ratio = optional_stat(data, "batched_over_per_row")
    cost = optional_stat(data, "logging_on_over_off")
    rows = [
        "| writer | rows/s |",
        "|---|---|",
        f"| per-row autocommit | {rows_s[0].fmt('.0f')} |",
        f"| batched | {rows_s[1].fmt('.0f')} |",
    ]
    if ratio:
        rows.append(f"\nBatched / per-row: **{ratio.fmt('.1f')}**.")
    if isinstance(gateway, dict):
        pair = [stat_at(gateway, "logging_off"), stat_at(gateway, "logging_on")]
        _bars(axes[1], ["logging off", "logging on"], pair, "Gateway throughput", "requests/s")
        rows.append(
            f"Gateway throughput with logging on / off: **{cost.fmt('.3f') if cost else '—'}** "
            f"({pair[1].fmt()} against {pair[0].fmt()} req/s)."
        )
    else:
        rows.append(f"Gateway throughput with logging on against off: {NOT_MEASURED}.")
    section.figure = _save(figure, plots, "interactions", _caption(data))
    section.body += rows
    section.targets += [
        _at_least("Interaction log: batched / per-row rows/s (issue 5)", ratio, 10.0, ".1f"),
        _at_least("Gateway throughput, logging on / off (issue 5)", cost, 0.95, ".3f"),
    ]


def _scaling(section: Section, data: dict[str, Any], plots: Path, unit: str) -> None:
    workloads: dict[str, Any] = data["workloads"]
    names = list(workloads)
    one = [stat_at(workloads[n], "throughput_rps", "1") for n in names]
    two = [stat_at(workloads[n], "throughput_rps", "2") for n in names]
    figure = Figure(figsize=(max(4.5, 3.6 * len(names)), 3.8))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name, a, b in zip(axes, names, one, two, strict=True):
        ratio = optional_stat(workloads[name], "ratio")
        title = (
            f"{name[:34]}\n2 / 1 = {ratio.fmt('.2f') if ratio else f'{b.median / a.median:.2f}'}"
        )
        _bars(ax, [f"1 {unit}", f"2 {unit}s"], [a, b], title, "requests/s")
    rows = [
        f"| workload | req/s, 1 {unit} | req/s, 2 {unit}s | ratio 2 / 1 | p99 ms, 1 → 2 "
        "| X-Cache |",
        "|---|---|---|---|---|---|",
    ]
    for name, a, b in zip(names, one, two, strict=True):
        entry = workloads[name]
        ratio = optional_stat(entry, "ratio") or Stat(b.median / a.median if a.median else math.nan)
        p99_1, p99_2 = (
            optional_stat(entry, "p99_latency_ms", "1"),
            optional_stat(entry, "p99_latency_ms", "2"),
        )
        p99 = f"{p99_1.fmt('.0f')} → {p99_2.fmt('.0f')}" if p99_1 and p99_2 else "—"
        tally = entry.get("x_cache") or {}
        x_cache = ", ".join(f"{k} {v}" for k, v in sorted(tally.items())) or "—"
        rows.append(
            f"| {name} | {a.fmt()} | {b.fmt()} | **{ratio.fmt('.3f')}** | {p99} | {x_cache} |"
        )
        if entry.get("description"):
            section.body.append(f"- **{name}**: {entry['description']}")
    section.body += ["", *rows]
    drills = data.get("drills")
    if isinstance(drills, dict) and drills:
        section.body += [
            "",
            "| drill | requests | client errors | p99 ms | also measured |",
            "|---|---|---|---|---|",
        ]
        shown = {"requests", "client_errors", "p99_latency_ms", "description"}
        for name, drill in drills.items():
            p99_drill = optional_stat(drill, "p99_latency_ms")
            facts = ", ".join(f"{k} {v}" for k, v in drill.items() if k not in shown) or "—"
            section.body.append(
                f"| {name} | {drill.get('requests', '—')} | {drill.get('client_errors', '—')} "
                f"| {p99_drill.fmt('.0f') if p99_drill else '—'} | {facts} |"
            )
        section.body += [""] + [
            f"- **{name}**: {drill['description']}"
            for name, drill in drills.items()
            if drill.get("description")
        ]
    section.figure = _save(figure, plots, section.key, _caption(data))


def replicas_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    _scaling(section, data, plots, "gateway replica")
    section.body.append(
        "\nNo numeric target is set in the issues. A second replica can only help where the "
        "gateway, not the worker, limits throughput (cache hits); with misses the single "
        "worker bounds both."
    )


def workers_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    _scaling(section, data, plots, "worker")


def locust_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    order = {"TTFT": 1, "ITL": 2}
    entries = sorted(
        (e for e in data.get("entries", []) if e.get("requests")),
        key=lambda e: (order.get(str(e.get("type")), 0), str(e.get("name"))),
    )
    names = [f"{e['type']} {e['name']}".replace("/v1/chat/completions", "chat") for e in entries]
    figure = Figure(figsize=(max(6.0, 1.6 * len(entries) + 2), 4.2))
    ax = figure.subplots()
    p50 = [Stat(float(e.get("p50_ms") or 0)) for e in entries]
    p95 = [Stat(float(e.get("p95_ms") or 0)) for e in entries]
    _grouped(
        ax,
        [n[:24] for n in names],
        {"p50": p50, "p95": p95},
        "Response time per entry (TTFT and ITL are per stream / per gap)",
        "ms",
        log=True,
    )
    ax.tick_params(axis="x", labelsize=7, labelrotation=15)
    section.figure = _save(figure, plots, "locust", f"{data.get('machine', '')}; one run")
    workload = data.get("workload") or {}
    section.body.append(
        f"Host {data.get('host')}, {data.get('users')} users for {data.get('duration_s')} s; "
        f"model `{workload.get('model')}`, repeat share {workload.get('repeat_share')}, "
        f"shapes {workload.get('shapes')}, max_tokens {workload.get('max_tokens')}."
    )
    rows = [
        "",
        "| type | name | requests | failures | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in [*entries, {**(data.get("http") or {}), "type": "all", "name": "HTTP requests"}]:
        rows.append(
            f"| {e.get('type')} | {e.get('name')} | {e.get('requests')} "
            f"| {e.get('failures')} | {e.get('p50_ms')} | {e.get('p95_ms')} "
            f"| {e.get('p99_ms')} |"
        )
    section.body += rows
    tally: dict[str, int] = {}
    for row in data.get("x_cache", []):
        key = f"{row['origin']} → {row['x_cache']}"
        tally[key] = tally.get(key, 0) + int(row["count"])
    if tally:
        section.body.append(
            "\nX-Cache by photo origin: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))
        )
    for check in data.get("thresholds", []):
        section.targets.append(
            Target(
                f"Locust: {check['name']}",
                str(check["limit"]),
                str(check["measured"]),
                bool(check["met"]),
            )
        )


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    source: str
    how: str
    build: Callable[[Section, dict[str, Any], Path], None]
    # Targets shown as "not measured yet" when the source is absent.
    planned: tuple[tuple[str, str], ...] = ()


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec(
        "gateway",
        "Gateway overhead against direct-to-worker",
        "bench-gateway.json",
        "make bench (loadtest/bench_gateway.py)",
        gateway_section,
        (
            ("Gateway throughput / direct (issue 3)", "≥ 0.950"),
            ("Added median TTFT through Nginx + gateway (issue 3)", "≤ 5 ms"),
        ),
    ),
    SectionSpec(
        "cache",
        "Answer cache: hit against miss, and coalescing fan-in",
        "bench-cache.json",
        "the cache benchmark (issue 4)",
        cache_section,
        (
            ("Cache hit throughput / miss throughput (issue 4)", "≥ 10.0"),
            ("Cache lookup added to a miss, median (issue 4)", "≤ 2 ms"),
        ),
    ),
    SectionSpec(
        "interactions",
        "Interaction log: batched against per-row",
        "bench-interactions.json",
        "the interaction-log benchmark (issue 5)",
        interactions_section,
        (
            ("Interaction log: batched / per-row rows/s (issue 5)", "≥ 10.0"),
            ("Gateway throughput, logging on / off (issue 5)", "≥ 0.950"),
        ),
    ),
    SectionSpec(
        "streaming",
        "Streaming inter-token latency: Nginx + gateway against direct",
        "bench-gateway.json",
        "make bench (loadtest/bench_gateway.py)",
        streaming_section,
    ),
    SectionSpec(
        "replicas",
        "1 against 2 gateway replicas",
        "bench-replicas.json",
        "make bench (loadtest/bench_replicas.py)",
        replicas_section,
    ),
    SectionSpec(
        "workers",
        "1 against 2 workers",
        "bench-workers.json",
        "the worker-pool benchmark (issue 7)",
        workers_section,
    ),
    SectionSpec(
        "locust",
        "Load test (Locust)",
        "locust/summary.json",
        "make loadtest (loadtest/run_locust.py)",
        locust_section,
    ),
)


def build_section(spec: SectionSpec, results: Path) -> Section:
    section = Section(spec.key, spec.title, spec.source, spec.how)
    path = results / spec.source
    if not path.exists():
        section.body.append(f"*{NOT_MEASURED}*: `{spec.source}` is absent; run {spec.how}.")
        section.targets += [Target(name, limit, "—", None) for name, limit in spec.planned]
        return section
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("the file is not a JSON object")
        spec.build(section, data, results / "plots")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        section.body = [f"*could not be read*: `{spec.source}`: {type(exc).__name__}: {exc}."]
        section.figure = None
        section.targets = [Target(name, limit, "unreadable", None) for name, limit in spec.planned]
        return section
    section.measured = True
    section.machine = str(data.get("machine") or "not recorded")
    header = [f"Measured on: {section.machine}"]
    if data.get("date"):
        header[0] += f", {data['date']}"
    if data.get("workload") and isinstance(data["workload"], str):
        header.append(f"Workload: {data['workload']}")
    if data.get("rounds"):
        header.append(f"Rounds: {data['rounds']} (figures are medians, (min–max) in brackets)")
    section.body = [" · ".join(header), "", *section.body]
    if data.get("notes"):
        section.body += ["", str(data["notes"])]
    for declared in data.get("targets") or []:
        section.targets.append(
            Target(
                str(declared["name"]),
                str(declared.get("threshold", "")),
                str(declared.get("measured", "")),
                bool(declared["met"]),
            )
        )
    return section


def render(sections: list[Section], generated: str) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"Generated {generated} by `python -m loadtest.report` from `loadtest/results/`.",
        "Each figure is measured in one run of its benchmark, with the repeats' median "
        "and (min–max); ratios compare endpoints measured in the same run.",
        "",
    ]
    machines = sorted({s.machine for s in sections if s.machine})
    if machines:
        lines.append("Machines: " + "; ".join(f"`{m}`" for m in machines))
        if len(machines) > 1:
            lines.append(
                "\n**The sections were measured on different machines**: compare "
                "ratios within a section, not absolute figures across sections."
            )
    else:
        lines.append(f"Machines: none yet: every benchmark is {NOT_MEASURED}.")
    targets = [(t, s) for s in sections for t in s.targets]
    met = sum(1 for t, _ in targets if t.met)
    missed = sum(1 for t, _ in targets if t.met is False)
    pending = sum(1 for t, _ in targets if t.met is None)
    lines += [
        "",
        "## Targets",
        "",
        f"{met} met, {missed} missed, {pending} {NOT_MEASURED}.",
        "",
        "| target | threshold | measured | verdict | section |",
        "|---|---|---|---|---|",
    ]
    for target, section in targets:
        link = f"[{section.title}](#{_anchor(section.title)})"
        lines.append(
            f"| {target.name} | {target.threshold} | {target.measured} "
            f"| {target.verdict} | {link} |"
        )
    for section in sections:
        lines += ["", f"## {section.title}", "", f"Source: `{section.source}`.", ""]
        if section.figure:
            lines += [f"![{section.title}]({section.figure})", ""]
        lines += section.body
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return kept.replace(" ", "-")


def build_report(results: Path, out: Path | None = None, now: dt.datetime | None = None) -> Path:
    """Write REPORT.md (and plots/) for the JSON files in results; returns the report's path."""
    out = out or results / "REPORT.md"
    sections = [build_section(spec, results) for spec in SECTIONS]
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(sections, stamp))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gather benchmark JSON into REPORT.md.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/REPORT.md")
    args = parser.parse_args(argv)
    path = build_report(args.results, args.out)
    print(f"wrote {path}")
    text = path.read_text()
    start = text.index("## Targets")
    print(text[start : text.index("\n## ", start + 1)])


if __name__ == "__main__":
    main()
