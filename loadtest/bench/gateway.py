"""make bench (gateway overhead): vLLM's benchmark client against the worker
directly, through Nginx alone, and through Nginx + gateway, in one run.

Endpoints alternate over rounds, and every run has a seed of its own: vLLM's
prefix cache would otherwise favour whichever endpoint sees a prompt second.
Medians over the rounds, and ratios to direct, are printed and saved as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from loadtest.bench.vllm_bench import BenchConfig, bench_config_from_env, run_vllm_bench
from loadtest.bench.worker import machine_description
from localstack.processes import NO_AUTH, LocalProcess, start_gateway, start_nginx, start_worker
from worker.profiles import REPO_ROOT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
GATEWAYS = int(os.environ.get("BENCH_GATEWAYS", "2"))
RESULTS = REPO_ROOT / "loadtest" / "results"
KEYS = ("request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms")
# Targets from the gateway issue: throughput >= 0.95 of direct, <= 5 ms added median TTFT.
MIN_THROUGHPUT_RATIO = 0.95
MAX_ADDED_TTFT_MS = 5.0


def _run_rounds(endpoints: dict[str, str], config: BenchConfig) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    names = list(endpoints)
    for round_index in range(ROUNDS):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for position, name in enumerate(order):
            seed = 20_000 + round_index * 100 + position
            runs[name].append(run_vllm_bench(endpoints[name], config, seed))
            print(f"  round {round_index + 1}/{ROUNDS} {name:<16} seed {seed} done", flush=True)
    return runs


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {
        name: {key: _stat([float(r[key]) for r in results]) for key in KEYS}
        for name, results in runs.items()
    }


def paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each round's figure against the same round's direct run, so the spread shows
    how much of a difference is noise."""
    direct = runs["direct"]
    ratios: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        pairs = list(zip(results, direct, strict=True))
        ratios[name] = {
            "throughput_ratio": _stat(
                [float(r["request_throughput"]) / float(d["request_throughput"]) for r, d in pairs]
            ),
            "added_median_ttft_ms": _stat(
                [float(r["median_ttft_ms"]) - float(d["median_ttft_ms"]) for r, d in pairs]
            ),
        }
    return ratios


def main() -> None:
    profile, config = bench_config_from_env()
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-gateway"
    processes: list[LocalProcess] = []
    try:
        worker = start_worker(run_dir, profile=profile)
        processes.append(worker)
        gateways = [start_gateway([worker.url], run_dir, env=NO_AUTH) for _ in range(GATEWAYS)]
        processes += gateways
        nginx_direct = start_nginx([f"127.0.0.1:{worker.port}"], run_dir, ready_path="/health")
        processes.append(nginx_direct)
        nginx_gateway = start_nginx([f"127.0.0.1:{g.port}" for g in gateways], run_dir)
        processes.append(nginx_gateway)
        endpoints = {
            "direct": worker.url,
            "nginx": nginx_direct.url,
            "nginx+gateway": nginx_gateway.url,
        }
        print(f"gateway overhead: {ROUNDS} rounds, {GATEWAYS} gateway replicas", flush=True)
        runs = _run_rounds(endpoints, config)
        summary, ratios = summarise(runs), paired_ratios(runs)
    finally:
        for process in reversed(processes):
            process.stop()

    direct = summary["direct"]
    print(f"\nmachine: {machine_description()}")
    print(f"workload: {config.describe()}, medians of {ROUNDS} rounds")
    print(f"{'endpoint':<16}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p99':>9}"
          f"{'thru/direct':>13}{'+TTFT p50':>11}")  # fmt: skip
    for name, figures in summary.items():
        thru = figures["request_throughput"]["median"]
        ttft = figures["median_ttft_ms"]["median"]
        ratio = thru / direct["request_throughput"]["median"]
        added = ttft - direct["median_ttft_ms"]["median"]
        figures["throughput_ratio"] = ratio
        figures["added_median_ttft_ms"] = added
        print(f"{name:<16}{thru:>8.2f}{ttft:>10.1f}{figures['p99_ttft_ms']['median']:>10.1f}"
              f"{figures['p99_itl_ms']['median']:>9.1f}{ratio:>13.3f}{added:>+11.1f}")  # fmt: skip
    gateway = summary["nginx+gateway"]
    met_thru = gateway["throughput_ratio"] >= MIN_THROUGHPUT_RATIO
    met_ttft = gateway["added_median_ttft_ms"] <= MAX_ADDED_TTFT_MS
    print(
        f"target throughput >= {MIN_THROUGHPUT_RATIO} x direct: {'met' if met_thru else 'MISSED'}"
    )
    print(f"target added median TTFT <= {MAX_ADDED_TTFT_MS} ms: {'met' if met_ttft else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-gateway.json").write_text(json.dumps(
        {"machine": machine_description(), "workload": config.describe(), "rounds": ROUNDS,
         "gateways": GATEWAYS, "profile": profile, "summary": summary, "ratios": ratios},
        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
