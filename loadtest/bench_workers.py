"""make bench (worker pool): throughput with 1 worker against 2, through the gateway.

Two cpu-tiny workers, each pinned to its own core (``WORKER_CPU_THREADS_BIND`` 0 and 1),
and two gateways: one that knows worker A only, one that knows A and B (least-loaded
choice with image affinity, gateway/pool.py). The answer cache is off, so every request
reaches a worker. Each round runs both setups (alternating which goes first) with a
closed loop of chat requests carrying a 640×480 product photo; the throughput ratio
(2 workers over 1) is taken within a round, then summarised as median (min–max).

Writes ``loadtest/results/bench-workers.json`` (schema in ``loadtest/report.py``).

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_REPEAT_SECONDS`` (10),
``BENCH_WORKERS_CONCURRENCY`` (8), ``BENCH_MAX_TOKENS`` (32), ``BENCH_PROFILE``
(``cpu-tiny``), ``BENCH_MODEL`` (served model name).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
from pathlib import Path
from typing import Any

from loadtest.bench_replicas import RESULTS, _stat, closed_loop
from loadtest.bench_worker import machine_description
from loadtest.photos import photo
from loadtest.workload import chat_body
from localstack.processes import LocalProcess, signal_tree, start_gateway, start_worker

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_REPEAT_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("BENCH_WORKERS_CONCURRENCY", "8"))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "32"))
PROFILE = os.environ.get("BENCH_PROFILE", "cpu-tiny")
MODEL = os.environ.get("BENCH_MODEL", "qwen3-vl-tiny")
SETUPS = ("1", "2")
WORKLOAD = "photo questions"


async def _kill_and_load(
    gateway: LocalProcess, victim: LocalProcess, body: dict[str, Any]
) -> tuple[Any, float]:
    loop = asyncio.create_task(closed_loop(gateway.url, body, CONCURRENCY, SECONDS))
    await asyncio.sleep(SECONDS / 3)
    signal_tree(victim, signal.SIGKILL)
    killed_at = SECONDS / 3
    return await loop, killed_at


def _kill_drill(
    gateway: LocalProcess, victim: LocalProcess, body: dict[str, Any]
) -> dict[str, Any]:
    """The 2-worker setup under the same load; worker B is SIGKILLed a third of the way in."""
    result, killed_at = asyncio.run(_kill_and_load(gateway, victim, body))
    p99 = result.percentile(0.99)
    print(
        f"  SIGKILL drill: {result.requests} ok, {result.errors} client errors, p99 {p99:.0f} ms",
        flush=True,
    )
    return {
        "requests": result.requests + result.errors,
        "client_errors": result.errors,
        "p99_latency_ms": {"median": p99, "min": p99, "max": p99},
        "description": f"{CONCURRENCY} clients for {SECONDS:.0f} s against the 2-worker "
        f"gateway; worker B SIGKILLed (launcher, API server, engine) after {killed_at:.1f} s. "
        "Requests it held are retried on worker A before any byte reaches the client.",
    }


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-workers"
    processes: list[LocalProcess] = []
    body: dict[str, Any] = chat_body(
        MODEL,
        [photo(11, "listing", "bag")],
        "Is this bag real leather?",
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=False,
    )
    body["ignore_eos"] = True
    body["min_tokens"] = MAX_TOKENS
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETUPS}
    ratios: list[float] = []
    errors = 0
    env = {"GATEWAY_CACHE_ENABLED": "false", "GATEWAY_HEALTH_INTERVAL_S": "0.5"}
    try:
        workers = [
            start_worker(run_dir, profile=PROFILE, env={"WORKER_CPU_THREADS_BIND": str(i)})
            for i in range(2)
        ]
        processes += workers
        gateways = {
            "1": start_gateway([workers[0].url], run_dir, env=env),
            "2": start_gateway([w.url for w in workers], run_dir, env=env),
        }
        processes += gateways.values()
        print(f"workers: {ROUNDS} rounds, {CONCURRENCY} clients for {SECONDS:.0f}s", flush=True)
        for round_index in range(ROUNDS):
            order = SETUPS if round_index % 2 == 0 else SETUPS[::-1]
            thru: dict[str, float] = {}
            for setup in order:
                loop = asyncio.run(closed_loop(gateways[setup].url, body, CONCURRENCY, SECONDS))
                errors += loop.errors
                runs[setup].append(
                    {
                        "throughput": loop.throughput,
                        "median_ms": loop.percentile(0.5),
                        "p99_ms": loop.percentile(0.99),
                    }
                )
                thru[setup] = loop.throughput
                print(
                    f"  round {round_index + 1}/{ROUNDS} {setup} worker(s): "
                    f"{loop.throughput:.2f} req/s, p99 {loop.percentile(0.99):.0f} ms, "
                    f"{loop.errors} errors",
                    flush=True,
                )
            ratios.append(thru["2"] / thru["1"])
        drills = {"worker SIGKILL under load": _kill_drill(gateways["2"], workers[1], body)}
    finally:
        for process in reversed(processes):
            process.stop()

    workloads: dict[str, dict[str, Any]] = {
        WORKLOAD: {
            "description": f"one chat request (640×480 JPEG, max_tokens {MAX_TOKENS}, "
            f"ignore_eos), {CONCURRENCY} clients back to back for {SECONDS:.0f} s per setup; "
            "answer cache off, so every request reaches a worker.",
            "throughput_rps": {s: _stat([r["throughput"] for r in runs[s]]) for s in SETUPS},
            "median_latency_ms": {s: _stat([r["median_ms"] for r in runs[s]]) for s in SETUPS},
            "p99_latency_ms": {s: _stat([r["p99_ms"] for r in runs[s]]) for s in SETUPS},
            "ratio": _stat(ratios),
        }
    }
    report = {
        "machine": machine_description(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": f"1 or 2 {PROFILE} workers (one core each) behind one gateway",
        "rounds": ROUNDS,
        "profile": PROFILE,
        "workloads": workloads,
        "drills": drills,
        "notes": f"{errors} failed requests over all rounds. Image affinity "
        f"{'off' if os.environ.get('GATEWAY_AFFINITY_ENABLED', '').lower() == 'false' else 'on'}"
        " (one photo in every request: with affinity on, it concentrates on one worker "
        "until the load bound). On a 2-core machine the second worker shares a core with "
        "the gateway and this client, so the ratio measures contention, not scaling.",
    }
    ratio = workloads[WORKLOAD]["ratio"]
    print(f"\n2 workers / 1: {ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-workers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
