"""Report section "Against the anchors" from bench-anchors.json (loadtest/bench/anchors.py):
the miss table (ratio to direct, added TTFT) and the hit table (share of static Nginx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from loadtest.report.plots import bars, caption, save_figure
from loadtest.report.values import Section, Stat, optional_stat, stat_at


def _fmt(value: Stat | None, spec: str) -> str:
    return value.fmt(spec) if value is not None else "—"


def anchors_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    miss, hit = data["miss"], data["hit"]
    miss_names = list(miss["summary"])
    hit_names = list(hit["endpoints"])
    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    bars(left, miss_names, [stat_at(miss, "ratios", n, "throughput_ratio") for n in miss_names],
         "Misses: throughput / direct", "ratio", value_fmt="{:.2f}")  # fmt: skip
    bars(right, hit_names, [stat_at(hit, "endpoints", n, "throughput_rps") for n in hit_names],
         "Hits: requests/s", "requests/s", value_fmt="{:.0f}")  # fmt: skip
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    section.figure = save_figure(figure, plots, "anchors", caption(data))
    rows = [
        "Misses (vLLM's benchmark client, streamed):",
        "",
        "| endpoint | req/s | / direct | TTFT p50 ms | added TTFT p50 ms |",
        "|---|---|---|---|---|",
    ]
    for name in miss_names:
        rows.append(
            f"| {name} | {stat_at(miss, 'summary', name, 'request_throughput').fmt('.1f')} "
            f"| {_fmt(optional_stat(miss, 'ratios', name, 'throughput_ratio'), '.3f')} "
            f"| {stat_at(miss, 'summary', name, 'median_ttft_ms').fmt('.1f')} "
            f"| {_fmt(optional_stat(miss, 'ratios', name, 'added_median_ttft_ms'), '+.1f')} |"
        )
    rows += [
        "",
        "Hits (one aiohttp client, the same question every time):",
        "",
        "| endpoint | req/s | / static Nginx | latency p50 ms | answers |",
        "|---|---|---|---|---|",
    ]
    for name in hit_names:
        outcomes = hit["endpoints"][name].get("outcomes") or {}
        seen = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        rows.append(
            f"| {name} | {stat_at(hit, 'endpoints', name, 'throughput_rps').fmt('.0f')} "
            f"| {_fmt(optional_stat(hit, 'endpoints', name, 'share_of_ceiling'), '.3f')} "
            f"| {stat_at(hit, 'endpoints', name, 'median_latency_ms').fmt('.2f')} | {seen} |"
        )
    log_ratio = optional_stat(hit, "log_on_over_off")
    if log_ratio is not None:
        rows += ["", f"One gateway, interaction log on / off on hits: {log_ratio.fmt('.3f')}."]
    section.body += rows
