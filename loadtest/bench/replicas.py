"""make bench (gateway replicas): 1 against 2 gateway replicas behind Nginx, in one run.

One worker, two gateway replicas A and B, and two Nginx instances: one in front of A
alone, one in front of A and B (``least_conn``). Both Nginx instances run all the
time; the rounds alternate which one goes first, and every throughput ratio is taken
within one round (2 replicas over 1), then summarised as median (min–max).

Two workloads, because a second replica can only help where the gateway is the
bottleneck:

* **misses**: vLLM's benchmark client (``random-mm``, the same workload as
  ``bench_gateway``, a fresh seed per run): every request reaches the worker.
* **repeated photo**: one identical, cacheable chat request (temperature 0, a
  640×480 product photo from ``loadtest.locust.photos``) in a closed loop by an aiohttp
  client at a fixed concurrency. With the answer cache on, these are cache hits
  served by the gateways and Redis; without it, they reach the worker too. The
  ``X-Cache`` header values are tallied and saved, so the report says which it was.

Writes ``loadtest/results/bench-replicas.json`` (schema in ``loadtest/report/build.py``).

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_REPEAT_SECONDS`` (10),
``BENCH_REPEAT_CONCURRENCY`` (32), ``BENCH_WORKER_URL`` (use a running worker instead
of starting one), and for a GPU host ``BENCH_PROFILE`` (worker profile, default
``cpu-tiny``), ``BENCH_MODEL`` (served model name), ``BENCH_TOKENIZER`` (tokenizer path
for vLLM's client), ``BENCH_NUM_PROMPTS``, ``BENCH_CONCURRENCY``. Gateway settings
(``GATEWAY_*``, e.g. the cache's Redis URL) are passed on to the replicas.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench.vllm_bench import bench_config_from_env, run_vllm_bench
from loadtest.bench.worker import machine_description
from loadtest.locust.photos import photo
from loadtest.locust.workload import chat_body
from localstack.processes import NO_AUTH, LocalProcess, start_gateway, start_nginx, start_worker
from worker.profiles import REPO_ROOT

RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR", REPO_ROOT / "loadtest" / "results"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REPEAT_SECONDS = float(os.environ.get("BENCH_REPEAT_SECONDS", "10"))
REPEAT_CONCURRENCY = int(os.environ.get("BENCH_REPEAT_CONCURRENCY", "32"))
MISSES = "misses (vLLM random-mm)"
REPEATS = "repeated photo"
SETUPS = ("1", "2")


@dataclass
class LoopResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    x_cache: Counter[str] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    base_url: str, body: dict[str, Any], concurrency: int, seconds: float
) -> LoopResult:
    """``concurrency`` clients sending ``body`` back to back for ``seconds``; successes
    (HTTP 200) count towards throughput, anything else is an error."""
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("LOADTEST_API_KEY", "").split(",")[0].strip():
        headers["Authorization"] = f"Bearer {key}"
    url = base_url.rstrip("/") + "/v1/chat/completions"
    result = LoopResult()
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one() -> tuple[int, float, str]:
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                return (
                    response.status,
                    (time.perf_counter() - start) * 1000,
                    response.headers.get("X-Cache", "absent"),
                )

        await one()  # warm-up: the first answer fills the cache, when there is one
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                try:
                    status, latency_ms, x_cache = await one()
                except (aiohttp.ClientError, TimeoutError):
                    result.errors += 1
                    continue
                result.x_cache[x_cache] += 1
                if status == 200:
                    result.requests += 1
                    result.latencies_ms.append(latency_ms)
                else:
                    result.errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    profile, config = bench_config_from_env()
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-replicas"
    processes: list[LocalProcess] = []
    repeat_body = chat_body(
        config.model,
        [photo(7, "listing", "bag")],
        "Is this bag real leather?",
        max_tokens=32,
        temperature=0.0,
        stream=False,
    )
    # runs[workload][setup] -> one dict per round
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        MISSES: {s: [] for s in SETUPS},
        REPEATS: {s: [] for s in SETUPS},
    }
    x_cache: Counter[str] = Counter()
    ratios: dict[str, list[float]] = {MISSES: [], REPEATS: []}
    try:
        worker_url = os.environ.get("BENCH_WORKER_URL", "").rstrip("/")
        if not worker_url:
            worker = start_worker(run_dir, profile=profile)
            processes.append(worker)
            worker_url = worker.url
        gateways = [start_gateway([worker_url], run_dir, env=NO_AUTH) for _ in range(2)]
        processes += gateways
        endpoints = {
            "1": start_nginx([f"127.0.0.1:{gateways[0].port}"], run_dir),
            "2": start_nginx([f"127.0.0.1:{g.port}" for g in gateways], run_dir),
        }
        processes += endpoints.values()
        print(
            f"gateway replicas: {ROUNDS} rounds; misses: {config.describe()}; repeats: "
            f"{REPEAT_CONCURRENCY} clients for {REPEAT_SECONDS:.0f}s",
            flush=True,
        )
        for round_index in range(ROUNDS):
            order = SETUPS if round_index % 2 == 0 else SETUPS[::-1]
            thru: dict[str, dict[str, float]] = {MISSES: {}, REPEATS: {}}
            for position, setup in enumerate(order):
                url = endpoints[setup].url
                seed = 30_000 + round_index * 100 + position
                result = run_vllm_bench(url, config, seed)
                runs[MISSES][setup].append(
                    {
                        "throughput": float(result["request_throughput"]),
                        "median_ms": float(result.get("median_e2el_ms", float("nan"))),
                        "p99_ms": float(result.get("p99_e2el_ms", float("nan"))),
                    }
                )
                loop = asyncio.run(
                    closed_loop(url, repeat_body, REPEAT_CONCURRENCY, REPEAT_SECONDS)
                )
                x_cache.update(loop.x_cache)
                if loop.errors:
                    print(f"  warning: {loop.errors} repeated-photo requests failed", flush=True)
                runs[REPEATS][setup].append(
                    {
                        "throughput": loop.throughput,
                        "median_ms": loop.percentile(0.5),
                        "p99_ms": loop.percentile(0.99),
                    }
                )
                thru[MISSES][setup] = float(result["request_throughput"])
                thru[REPEATS][setup] = loop.throughput
                print(
                    f"  round {round_index + 1}/{ROUNDS} {setup} replica(s): misses "
                    f"{thru[MISSES][setup]:.2f} req/s, repeats {loop.throughput:.1f} req/s",
                    flush=True,
                )
            for name in ratios:
                ratios[name].append(thru[name]["2"] / thru[name]["1"])
    finally:
        for process in reversed(processes):
            process.stop()

    descriptions = {
        MISSES: f"vLLM's benchmark client, {config.describe()}; every request reaches the "
        "single worker.",
        REPEATS: f"one identical chat request (640×480 JPEG, temperature 0, max_tokens 32), "
        f"{REPEAT_CONCURRENCY} clients back to back for {REPEAT_SECONDS:.0f} s per setup; "
        "cache hits when the gateway's answer cache is on (see X-Cache).",
    }
    workloads: dict[str, Any] = {}
    for name in (MISSES, REPEATS):
        workloads[name] = {
            "description": descriptions[name],
            "throughput_rps": {s: _stat([r["throughput"] for r in runs[name][s]]) for s in SETUPS},
            "median_latency_ms": {
                s: _stat([r["median_ms"] for r in runs[name][s]]) for s in SETUPS
            },
            "p99_latency_ms": {s: _stat([r["p99_ms"] for r in runs[name][s]]) for s in SETUPS},
            "ratio": _stat(ratios[name]),
        }
    workloads[REPEATS]["x_cache"] = dict(x_cache)
    report = {
        "machine": machine_description(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": f"1 worker ({profile}), 1 or 2 gateway replicas behind Nginx",
        "rounds": ROUNDS,
        "profile": profile,
        "workloads": workloads,
    }
    print(f"\nmachine: {report['machine']}")
    print(f"{'workload':<26}{'1 replica':>12}{'2 replicas':>12}{'2 / 1':>8}  (min-max)")
    for name, entry in workloads.items():
        one, two, ratio = entry["throughput_rps"]["1"], entry["throughput_rps"]["2"], entry["ratio"]
        print(
            f"{name:<26}{one['median']:>12.2f}{two['median']:>12.2f}{ratio['median']:>8.3f}"
            f"  ({ratio['min']:.3f}-{ratio['max']:.3f})"
        )
    print(f"X-Cache on the repeated photo: {dict(x_cache) or 'none'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-replicas.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
