"""Report sections for issue 24: hits for shoppers' body sizes against static Nginx
(bench-hits.json, loadtest/bench/hits.py) and a hot question under overload
(bench-overload.json, loadtest/bench/overload.py). Both benchmarks declare their own
targets, which join the report's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from loadtest.report.plots import bars, caption, save_figure
from loadtest.report.values import Section, optional_stat, stat_at


def hits_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    summary = data["summary"]
    rows = ["| body | endpoint | req/s | / static Nginx |", "|---|---|---|---|"]
    labels, shares = [], []
    for body, endpoints in summary.items():
        for name in endpoints:
            share = stat_at(summary, body, name, "share_of_static")
            rows.append(
                f"| {body} | {name} | {stat_at(summary, body, name, 'throughput_rps').fmt('.0f')} "
                f"| {share.fmt('.3f')} |"
            )
            if name != "nginx static":
                labels.append(f"{body.split(',')[0]}\n{name}")
                shares.append(share)
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 1)
    bars(axes, labels, shares, "Hits: share of a static Nginx", "share", value_fmt="{:.2f}")
    axes.tick_params(axis="x", labelsize=7)
    section.figure = save_figure(figure, plots, "hits", caption(data))
    section.body += rows


def overload_section(section: Section, data: dict[str, Any], plots: Path) -> None:
    summary = data["summary"]
    names = list(summary)
    rows = [
        "| condition [code] | hot answers that were hits | hot req/s | worker queue, max |",
        "|---|---|---|---|",
    ]
    for name in names:
        share = stat_at(summary, name, "hot_hit_share")
        queue = optional_stat(summary, name, "worker_max_waiting")
        rows.append(
            f"| {name} | {share.fmt('.4f')} | {stat_at(summary, name, 'hot_rps').fmt('.0f')} "
            f"| {queue.fmt('.0f') if queue is not None else '—'} |"
        )
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 1)
    bars(axes, names, [stat_at(summary, n, "hot_hit_share") for n in names],
         "Hot question: share answered from the cache", "share", value_fmt="{:.3f}")  # fmt: skip
    axes.tick_params(axis="x", labelsize=7)
    section.figure = save_figure(figure, plots, "overload", caption(data))
    section.body += rows
