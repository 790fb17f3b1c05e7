"""make bench (anchors): our gateway beside vLLM's Rust router, LiteLLM and Nginx itself,
in one run, with everything of ours on (a real API key, rate limits in Redis, moderation,
the answer cache, the interaction log in MariaDB).

* Misses: vLLM's own benchmark client (random-mm, one 256x256 image + 32 text tokens in,
  32 out, 64 prompts, concurrency 16) against the worker directly, Nginx + 2 gateways,
  one gateway, ``vllm-router`` (round robin) and the LiteLLM proxy (master key).
* Hits: one aiohttp client, the same 160x120 PNG question 600 times at concurrency 16,
  against Nginx returning a static JSON answer of the same size (the ceiling), Nginx + 2
  gateways, one gateway, one gateway with the interaction log off, and LiteLLM with its
  Redis cache.

Endpoints alternate over rounds (each round starts one later), every miss run has a
seed of its own (vLLM's prefix cache would otherwise favour the second visitor), and
ratios are taken per round. Writes loadtest/results/bench-anchors.json.

    python -m loadtest.bench.anchors

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_DATABASE_URL`` (a database of its own, created
with ``BENCH_DB_ADMIN_URL``), ``BENCH_SKIP`` (comma-separated endpoint names to leave out).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench.anchor_servers import start_litellm, start_router, start_static_nginx
from loadtest.bench.cache import _body as hit_body
from loadtest.bench.gateway import paired_ratios, summarise
from loadtest.bench.vllm_bench import BenchConfig, run_vllm_bench
from loadtest.bench.worker import machine_description
from localstack.processes import (
    GATEWAY_PYTHON,
    LocalProcess,
    start_gateway,
    start_nginx,
    start_worker,
)
from worker.profiles import REPO_ROOT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RESULTS = REPO_ROOT / "loadtest" / "results"
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "mysql://vlm:vlm@127.0.0.1:3306/vlm_bench")
ADMIN_URL = os.environ.get("BENCH_DB_ADMIN_URL", "mysql://root@127.0.0.1:3306")
SKIP = {name.strip() for name in os.environ.get("BENCH_SKIP", "").split(",") if name.strip()}
MISS = BenchConfig(
    num_prompts=64, concurrency=16, input_len=32, output_len=32, image_height=256, image_width=256
)
HIT_REQUESTS = 600
HIT_CONCURRENCY = 16
# Targets (issue 16).
HIT_CEILING_SHARE = 0.35
LOG_ON_OVER_OFF = 0.95
OURS, ONE, ONE_LOG_OFF = "nginx+2 gateways", "1 gateway", "1 gateway, log off"
DIRECT, ROUTER, LITELLM, STATIC = "direct", "vllm-router", "litellm", "nginx static"


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _rotations(names: list[str]) -> list[list[str]]:
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(ROUNDS)]


def create_bench_key() -> str:
    """A real API key (limits far above this machine's rate) in a database of its own."""
    gw = [str(GATEWAY_PYTHON), "-m"]
    migrate = ["gateway.interactions", "--url", DATABASE_URL, "migrate", "--create-db"]
    subprocess.run([*gw, *migrate, "--admin-url", ADMIN_URL], check=True, cwd=REPO_ROOT)
    created = subprocess.run(
        [*gw, "gateway.auth", "--url", DATABASE_URL, "create", "--name", "bench-anchors",
         "--rpm", "1000000", "--tpm", "1000000000", "--concurrent", "10000"],
        check=True, cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    return created.stdout.strip()


# -- misses -------------------------------------------------------------------------------------


def run_misses(endpoints: dict[str, tuple[str, str | None]]) -> dict[str, list[dict[str, Any]]]:
    """vLLM's client against every endpoint (url, API key), in rotating order."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    # One unrecorded run each first: the engine's first batches, and every proxy's first
    # connections, are slower than the rest (in one run, direct gave 37.5 req/s first, 85 later).
    for position, (url, key) in enumerate(endpoints.values()):
        run_vllm_bench(url, MISS, 29_000 + position, api_key=key)
    for round_index, order in enumerate(_rotations(list(endpoints))):
        for position, name in enumerate(order):
            url, key = endpoints[name]
            seed = 30_000 + round_index * 100 + position
            runs[name].append(run_vllm_bench(url, MISS, seed, api_key=key))
            print(f"  miss round {round_index + 1}/{ROUNDS} {name:<18} seed {seed} "
                  f"{runs[name][-1]['request_throughput']:.1f} req/s", flush=True)  # fmt: skip
    return runs


# -- hits ---------------------------------------------------------------------------------------


def _outcome(headers: Any) -> str:
    if "X-Cache" in headers:
        return str(headers["X-Cache"])
    if "x-litellm-cache-key" in headers:
        return "hit"  # LiteLLM names the cache key only when it answered from the cache
    return "other"


async def hit_run(url: str, body: bytes, key: str | None, requests: int) -> dict[str, Any]:
    """The same body ``requests`` times, HIT_CONCURRENCY at a time: req/s, median latency."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    left = requests
    connector = aiohttp.TCPConnector(limit=HIT_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", data=body,
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: status {response.status}")
                    outcome = _outcome(response.headers)
                latencies.append((time.perf_counter() - start) * 1000)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(HIT_CONCURRENCY)))
        seconds = time.perf_counter() - start
    return {
        "throughput_rps": requests / seconds,
        "median_latency_ms": statistics.median(latencies),
        "outcomes": outcomes,
    }


async def _answer_of(url: str, body: bytes, key: str | None) -> bytes:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=body, headers=headers) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}: {await response.text()}")
        return await response.read()


def run_hits(
    endpoints: dict[str, tuple[str, str | None]], body: bytes
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    for url, key in endpoints.values():  # warm: the answer is stored, links are open
        asyncio.run(hit_run(url, body, key, 64))
    for round_index, order in enumerate(_rotations(list(endpoints))):
        for name in order:
            url, key = endpoints[name]
            runs[name].append(asyncio.run(hit_run(url, body, key, HIT_REQUESTS)))
            print(f"  hit round {round_index + 1}/{ROUNDS} {name:<18} "
                  f"{runs[name][-1]['throughput_rps']:.0f} req/s "
                  f"{runs[name][-1]['outcomes']}", flush=True)  # fmt: skip
    return runs


def _per_round(
    runs: dict[str, list[dict[str, Any]]], name: str, base: str, f: Callable[[Any, Any], float]
) -> dict[str, float] | None:
    if name not in runs or base not in runs:
        return None
    return _stat([f(a, b) for a, b in zip(runs[name], runs[base], strict=True)])


def summarise_hits(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def share(a: Any, b: Any) -> float:
        return float(a["throughput_rps"]) / float(b["throughput_rps"])

    endpoints: dict[str, Any] = {}
    for name, results in runs.items():
        outcomes: dict[str, int] = {}
        for result in results:
            for outcome, count in result["outcomes"].items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
        endpoints[name] = {
            "throughput_rps": _stat([r["throughput_rps"] for r in results]),
            "median_latency_ms": _stat([r["median_latency_ms"] for r in results]),
            "outcomes": outcomes,
            "share_of_ceiling": _per_round(runs, name, STATIC, share),
        }
    return {"endpoints": endpoints, "log_on_over_off": _per_round(runs, ONE, ONE_LOG_OFF, share)}


# -- verdicts -----------------------------------------------------------------------------------


def targets(miss: dict[str, Any], hit: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    ratios = miss["ratios"]
    if OURS in ratios and ROUTER in ratios:
        ours, router = ratios[OURS], ratios[ROUTER]
        ours_r, router_r = ours["throughput_ratio"]["median"], router["throughput_ratio"]["median"]
        found.append({"name": "Misses: Nginx + 2 gateways, throughput / direct ≥ vllm-router's",
                      "threshold": f"≥ {router_r:.3f}", "measured": f"{ours_r:.3f}",
                      "met": ours_r >= router_r})  # fmt: skip
        ours_t = ours["added_median_ttft_ms"]["median"]
        router_t = router["added_median_ttft_ms"]["median"]
        found.append({"name": "Misses: Nginx + 2 gateways, added median TTFT ≤ vllm-router's",
                      "threshold": f"≤ {router_t:+.1f} ms", "measured": f"{ours_t:+.1f} ms",
                      "met": ours_t <= router_t})  # fmt: skip
    share = (hit["endpoints"].get(OURS) or {}).get("share_of_ceiling")
    if share:
        found.append({"name": "Hits: Nginx + 2 gateways / static Nginx",
                      "threshold": f"≥ {HIT_CEILING_SHARE:.2f}",
                      "measured": f"{share['median']:.3f}",
                      "met": share["median"] >= HIT_CEILING_SHARE})  # fmt: skip
    if hit.get("log_on_over_off"):
        ratio = hit["log_on_over_off"]["median"]
        found.append({"name": "Hits: one gateway, interaction log on / off",
                      "threshold": f"≥ {LOG_ON_OVER_OFF:.2f}", "measured": f"{ratio:.3f}",
                      "met": ratio >= LOG_ON_OVER_OFF})  # fmt: skip
    return found


def print_tables(miss: dict[str, Any], hit: dict[str, Any], found: list[dict[str, Any]]) -> None:
    print(f"\nmachine: {machine_description()}")
    print(f"misses: vLLM bench random-mm, {MISS.describe()}; medians of {ROUNDS} rounds")
    print(f"{'endpoint':<20}{'req/s':>8}{'/ direct':>10}{'TTFT p50':>10}{'+TTFT p50':>11}")
    for name, figures in miss["summary"].items():
        ratio = miss["ratios"][name]
        print(f"{name:<20}{figures['request_throughput']['median']:>8.1f}"
              f"{ratio['throughput_ratio']['median']:>10.3f}"
              f"{figures['median_ttft_ms']['median']:>10.1f}"
              f"{ratio['added_median_ttft_ms']['median']:>+11.1f}")  # fmt: skip
    print(f"\nhits: the same 160x120 PNG question {HIT_REQUESTS} times at concurrency "
          f"{HIT_CONCURRENCY}, one aiohttp client; medians of {ROUNDS} rounds")  # fmt: skip
    print(f"{'endpoint':<20}{'req/s':>9}{'/ ceiling':>11}{'p50 ms':>9}")
    for name, figures in hit["endpoints"].items():
        share = figures["share_of_ceiling"]
        print(f"{name:<20}{figures['throughput_rps']['median']:>9.0f}"
              f"{share['median'] if share else float('nan'):>11.3f}"
              f"{figures['median_latency_ms']['median']:>9.2f}")  # fmt: skip
    print()
    for target in found:
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {target['name']} {target['threshold']}: {target['measured']} -> {verdict}")


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")).resolve() / "bench-anchors"
    namespace = f"anchors{uuid.uuid4().hex[:8]}"
    key = create_bench_key()
    processes: list[LocalProcess] = []
    try:
        worker = start_worker(run_dir)
        processes.append(worker)
        model = "qwen3-vl-tiny"
        env = {"GATEWAY_LOG_DATABASE_URL": DATABASE_URL, "GATEWAY_CACHE_NAMESPACE": namespace}
        gateways = [start_gateway([worker.url], run_dir, env=env) for _ in range(2)]
        log_off = start_gateway([worker.url], run_dir, env={**env, "GATEWAY_LOG_ENABLED": "false"})
        nginx = start_nginx([f"127.0.0.1:{g.port}" for g in gateways], run_dir)
        processes += [*gateways, log_off, nginx]
        misses: dict[str, tuple[str, str | None]] = {
            DIRECT: (worker.url, None), OURS: (nginx.url, key), ONE: (gateways[0].url, key),
        }  # fmt: skip
        if ROUTER not in SKIP:
            router = start_router(worker.url, run_dir)
            processes.append(router)
            misses[ROUTER] = (router.url, None)
        if LITELLM not in SKIP:
            litellm, master = start_litellm(worker.url, model, run_dir)
            processes.append(litellm)
            misses[LITELLM] = (litellm.url, master)
        print(f"anchors, misses: {ROUNDS} rounds over {', '.join(misses)}", flush=True)
        miss_runs = run_misses(misses)
        if LITELLM not in SKIP:
            processes.remove(litellm)
            litellm.stop()
        miss = {"summary": summarise(miss_runs), "ratios": paired_ratios(miss_runs)}

        body = hit_body(seed=16)
        answer = asyncio.run(_answer_of(nginx.url, body, key))
        static = start_static_nginx(answer, run_dir)
        processes.append(static)
        hits: dict[str, tuple[str, str | None]] = {
            STATIC: (static.url, None), OURS: (nginx.url, key), ONE: (gateways[0].url, key),
            ONE_LOG_OFF: (log_off.url, key),
        }  # fmt: skip
        if LITELLM not in SKIP:
            cached, master = start_litellm(worker.url, model, run_dir, redis_namespace=namespace)
            processes.append(cached)
            hits["litellm+redis cache"] = (cached.url, master)
        print(f"anchors, hits: {ROUNDS} rounds over {', '.join(hits)} "
              f"({len(answer)}-byte answer)", flush=True)  # fmt: skip
        hit = summarise_hits(run_hits(hits, body))
    finally:
        for process in reversed(processes):
            process.stop()
    found = targets(miss, hit)
    print_tables(miss, hit, found)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-anchors.json").write_text(json.dumps({
        "machine": machine_description(),
        "workload": f"misses: vLLM bench random-mm, {MISS.describe()}; hits: one 160x120 PNG "
                    f"question {HIT_REQUESTS} times at concurrency {HIT_CONCURRENCY}",
        "rounds": ROUNDS, "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "miss": miss, "hit": hit, "targets": found,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
