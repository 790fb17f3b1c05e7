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
* Every file has ``"machine"`` (``loadtest.bench.worker.machine_description()``),
  ``"workload"`` (one line: what was sent, at what concurrency) and ``"rounds"``; it may
  have ``"date"`` (ISO 8601) and ``"notes"`` (markdown, printed under the section).
* Any file may have ``"targets": [{"name", "threshold", "measured", "met": bool}]``:
  checks the benchmark made itself; they join the report's target table.

Files and their schemas
-----------------------
``bench-gateway.json`` (``loadtest/bench/gateway.py``): sections "Gateway overhead" and
"Streaming inter-token latency"::

    {"machine", "workload", "rounds", "gateways": int,
     "summary": {"direct" | "nginx" | "nginx+gateway": {
         "request_throughput": Stat, "median_ttft_ms": Stat, "p99_ttft_ms": Stat,
         "median_itl_ms": Stat, "p99_itl_ms": Stat,
         "throughput_ratio": float | Stat, "added_median_ttft_ms": float | Stat}}}

  Targets (issue 3): nginx+gateway ``throughput_ratio`` >= 0.95; ``added_median_ttft_ms``
  <= 5. Optional ``"ratios": {endpoint: {"throughput_ratio": Stat,
  "added_median_ttft_ms": Stat}}`` (per-round pairs) takes precedence when present.

``bench-anchors.json`` (``loadtest/bench/anchors.py``, issue 16): section "Against the
anchors"::

    {"machine", "workload", "rounds", "date", "targets",
     "miss": {"summary": {ENDPOINT: {"request_throughput": Stat, "median_ttft_ms": Stat, ...}},
              "ratios": {ENDPOINT: {"throughput_ratio": Stat, "added_median_ttft_ms": Stat}}},
     "hit": {"endpoints": {ENDPOINT: {"throughput_rps": Stat, "median_latency_ms": Stat,
                                      "outcomes": {str: int}, "share_of_ceiling": Stat}},
             "log_on_over_off": Stat}}

``bench-hits.json`` (``loadtest/bench/hits.py``, issue 24): section "Hits for shoppers'
body sizes"::

    {"machine", "workload", "rounds", "date", "targets",
     "summary": {BODY: {ENDPOINT: {"throughput_rps": Stat, "share_of_static": Stat}}}}

``bench-overload.json`` (``loadtest/bench/overload.py``, issue 24): section "A hot question
under overload"::

    {"machine", "workload", "rounds", "date", "targets",
     "summary": {"CONDITION [TREE]": {"hot_hit_share": Stat, "hot_rps": Stat, "runs": [...]}}}

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

``bench-replicas.json`` (``loadtest/bench/replicas.py``) and ``bench-workers.json``
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

``locust/summary.json`` (``loadtest/locust/run.py``, ``make loadtest``): section "Load
test (Locust)": the locustfile's summary plus ``"thresholds": [{"name", "limit",
"measured", "met"}]``, ``"passed"``, ``"machine"``, ``"duration_s"``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.report.anchors import anchors_section
from loadtest.report.overload import hits_section, overload_section
from loadtest.report.sections import (
    cache_section,
    gateway_section,
    interactions_section,
    locust_section,
    replicas_section,
    streaming_section,
    workers_section,
)
from loadtest.report.values import NOT_MEASURED, Section, Stat, Target

__all__ = ["NOT_MEASURED", "SECTIONS", "Stat", "build_report"]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "loadtest" / "results"


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
        "make bench (loadtest/bench/gateway.py)",
        gateway_section,
        (
            ("Gateway throughput / direct (issue 3)", "≥ 0.950"),
            ("Added median TTFT through Nginx + gateway (issue 3)", "≤ 5 ms"),
        ),
    ),
    SectionSpec(
        "anchors",
        "Against the anchors: vLLM's router, LiteLLM, Nginx",
        "bench-anchors.json",
        "make bench (loadtest/bench/anchors.py)",
        anchors_section,
        (
            ("Misses: Nginx + 2 gateways, throughput / direct ≥ vllm-router's (issue 16)", "—"),
            ("Misses: added median TTFT ≤ vllm-router's (issue 16)", "—"),
            ("Hits: Nginx + 2 gateways / static Nginx (issue 16)", "≥ 0.35"),
            ("Hits: interaction log on / off (issue 16)", "≥ 0.95"),
        ),
    ),
    SectionSpec(
        "hits",
        "Hits for shoppers' body sizes: Nginx + 2 gateways against static Nginx",
        "bench-hits.json",
        "make bench (loadtest/bench/hits.py)",
        hits_section,
        (("Hits: Nginx + 2 gateways / static Nginx, photo bodies (issue 24)", "≥ 0.35"),),
    ),
    SectionSpec(
        "overload",
        "A hot question under overload: hits while misses saturate the worker",
        "bench-overload.json",
        "make bench (loadtest/bench/overload.py)",
        overload_section,
        (("Hot question answered from the cache under overload (issue 24)", "≥ 99%"),),
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
        "make bench (loadtest/bench/gateway.py)",
        streaming_section,
    ),
    SectionSpec(
        "replicas",
        "1 against 2 gateway replicas",
        "bench-replicas.json",
        "make bench (loadtest/bench/replicas.py)",
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
        "make loadtest, then make loadtest-publish (loadtest/locust/run.py)",
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
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.report", description="Gather benchmark JSON into REPORT.md."
    )
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
