"""One function per report section: reads a benchmark's JSON (schemas in loadtest/report/build.py)
and fills in the section's text, plot and targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from loadtest.report.plots import bars, caption, grouped, save_figure
from loadtest.report.values import (
    NOT_MEASURED,
    Section,
    Stat,
    Target,
    at_least,
    at_most,
    optional_stat,
    stat_at,
)

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
    bars(left, names, thru, "Request throughput", "requests/s")
    bars(right, names, ttft, "Median time to first token", "ms")
    section.figure = save_figure(figure, plots, "gateway", caption(data))
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
        at_least(
            "Gateway throughput / direct (issue 3)",
            _ratio(data, "nginx+gateway", "throughput_ratio"),
            0.95,
            ".3f",
        ),
        at_most(
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
    bars(left, names, median, "Median inter-token latency", "ms")
    bars(right, names, p99, "p99 inter-token latency", "ms")
    section.figure = save_figure(figure, plots, "streaming", caption(data))
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
    bars(axes[0], labels, thru, "Throughput", "requests/s", log=True)
    bars(axes[1], labels, latency, "Median latency", "ms", log=True)
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
        bars(
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
    section.figure = save_figure(figure, plots, "cache", caption(data))
    section.body += rows
    section.targets += [
        at_least("Cache hit throughput / miss throughput (issue 4)", ratio, 10.0, ".1f"),
        at_most("Cache lookup added to a miss, median (issue 4)", lookup, 2.0, " ms"),
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
    bars(axes[0], ["per-row", "batched"], rows_s, "Rows written per second", "rows/s", log=True)
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
        bars(axes[1], ["logging off", "logging on"], pair, "Gateway throughput", "requests/s")
        rows.append(
            f"Gateway throughput with logging on / off: **{cost.fmt('.3f') if cost else '—'}** "
            f"({pair[1].fmt()} against {pair[0].fmt()} req/s)."
        )
    else:
        rows.append(f"Gateway throughput with logging on against off: {NOT_MEASURED}.")
    section.figure = save_figure(figure, plots, "interactions", caption(data))
    section.body += rows
    section.targets += [
        at_least("Interaction log: batched / per-row rows/s (issue 5)", ratio, 10.0, ".1f"),
        at_least("Gateway throughput, logging on / off (issue 5)", cost, 0.95, ".3f"),
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
        bars(ax, [f"1 {unit}", f"2 {unit}s"], [a, b], title, "requests/s")
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
    section.figure = save_figure(figure, plots, section.key, caption(data))


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
    grouped(
        ax,
        [n[:24] for n in names],
        {"p50": p50, "p95": p95},
        "Response time per entry (TTFT and ITL are per stream / per gap)",
        "ms",
        log=True,
    )
    ax.tick_params(axis="x", labelsize=7, labelrotation=15)
    section.figure = save_figure(figure, plots, "locust", f"{data.get('machine', '')}; one run")
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
