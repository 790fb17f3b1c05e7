"""make bench (answer cache): hits against misses through Nginx, the lookup's cost, and
coalescing fan-in, in one run. Writes loadtest/results/bench-cache.json.

* miss: a fresh photo per request (temperature 0, so cacheable), concurrency 8;
* hit: the same requests again, now all answered from Redis;
* lookup cost: one request at a time (no queueing noise), misses through a replica
  with the cache on and one with it off (GATEWAY_CACHE_ENABLED=false), interleaved
  request by request; the difference of the medians is what Redis adds to a miss;
* fan-in: 50 identical requests at once over 2 replicas, counted at the worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench.worker import machine_description
from localstack.processes import NO_AUTH, LocalProcess, start_gateway, start_nginx, start_worker
from worker.profiles import REPO_ROOT
from worker.sample_image import png_bytes

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REQUESTS = 64
CONCURRENCY = 8
FAN_IN = 50
LATENCY_SAMPLES = 32
CHAT_URL = "{}/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
RESULTS = REPO_ROOT / "loadtest" / "results"


def _body(seed: int) -> bytes:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(160, 120, seed=seed)).decode()
    return json.dumps(
        {
            "model": "qwen3-vl-tiny",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": uri}},
                        {"type": "text", "text": "Is this bag real leather?"},
                    ],
                }
            ],
            "max_tokens": 16,
            "temperature": 0,
        }
    ).encode()


async def _run(url: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """Send every body once with `concurrency` clients; throughput and median latency."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    queue = list(reversed(bodies))
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", data=body,
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")
                    cache = response.headers.get("X-Cache", "absent")
                latencies.append((time.perf_counter() - start) * 1000)
                outcomes[cache] = outcomes.get(cache, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "throughput_rps": len(bodies) / seconds,
        "median_latency_ms": statistics.median(latencies),
        "outcomes": outcomes,
    }


async def _lookup_cost(cached: str, uncached: str, salt: int) -> float:
    """Median miss latency with the cache on minus off, one request at a time."""
    latencies: dict[str, list[float]] = {cached: [], uncached: []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for i in range(LATENCY_SAMPLES):
            pair = [(cached, 2 * i), (uncached, 2 * i + 1)]
            for url, offset in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                body = _body(salt + offset)
                async with session.post(CHAT_URL.format(url), data=body, headers=JSON) as r:
                    await r.read()
                latencies[url].append((time.perf_counter() - start) * 1000)
    return statistics.median(latencies[cached]) - statistics.median(latencies[uncached])


async def _worker_requests(worker_url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(worker_url + "/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


async def _fan_in(worker_url: str, replicas: list[str], seed: int) -> float:
    body = _body(seed)
    before = await _worker_requests(worker_url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def one(url: str) -> None:
            async with session.post(url + "/v1/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as r:  # fmt: skip
                await r.read()

        await asyncio.gather(*(one(replicas[i % len(replicas)]) for i in range(FAN_IN)))
    return await _worker_requests(worker_url) - before


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def measure(worker: LocalProcess, cached: str, uncached: str, replicas: list[str]) -> Any:
    hits: list[dict[str, Any]] = []
    misses: list[dict[str, Any]] = []
    added: list[float] = []
    fan: list[float] = []
    for round_index in range(ROUNDS):
        salt = uuid.uuid4().int % 2**48  # fresh photos every round: misses stay misses
        fresh = [_body(salt + i) for i in range(REQUESTS)]
        misses.append(await _run(cached, fresh, CONCURRENCY))
        hits.append(await _run(cached, fresh, CONCURRENCY))
        added.append(await _lookup_cost(cached, uncached, salt + REQUESTS))
        fan.append(await _fan_in(worker.url, replicas, salt + REQUESTS + 2 * LATENCY_SAMPLES))
        print(f"  round {round_index + 1}/{ROUNDS}: miss {misses[-1]['outcomes']}, "
              f"hit {hits[-1]['outcomes']}, fan-in worker requests {fan[-1]:.0f}",
              flush=True)  # fmt: skip

    def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            key: _stat([r[key] for r in runs]) for key in ("throughput_rps", "median_latency_ms")
        }

    return {
        "hit": figures(hits),
        "miss": figures(misses),
        "hit_over_miss_throughput": _stat(
            [h["throughput_rps"] / m["throughput_rps"] for h, m in zip(hits, misses, strict=True)]
        ),
        "lookup_added_median_ms": _stat(added),
        "coalescing": {
            "concurrent_requests": FAN_IN,
            "replicas": len(replicas),
            "worker_requests": _stat(fan),
            "fan_in": _stat([FAN_IN / max(n, 1) for n in fan]),
        },
    }


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-cache"
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    processes: list[LocalProcess] = []
    try:
        worker = start_worker(run_dir)
        processes.append(worker)
        env = {"GATEWAY_CACHE_NAMESPACE": namespace, "GATEWAY_LOG_ENABLED": "false", **NO_AUTH}
        on = [start_gateway([worker.url], run_dir, env=env) for _ in range(2)]
        no_cache = {**env, "GATEWAY_CACHE_ENABLED": "false"}
        off = start_gateway([worker.url], run_dir, env=no_cache)
        processes += [*on, off]
        nginx_on = start_nginx([f"127.0.0.1:{g.port}" for g in on], run_dir)
        nginx_off = start_nginx([f"127.0.0.1:{off.port}"], run_dir)
        processes += [nginx_on, nginx_off]
        print(f"answer cache: {ROUNDS} rounds of {REQUESTS} requests at concurrency {CONCURRENCY}")
        result = asyncio.run(measure(worker, nginx_on.url, nginx_off.url, [g.url for g in on]))
    finally:
        for process in reversed(processes):
            process.stop()
    result.update(
        machine=machine_description(),
        workload=f"{REQUESTS} requests per round, one 160x120 PNG + a question, 16 tokens, "
        f"concurrency {CONCURRENCY}, through Nginx; lookup cost from {LATENCY_SAMPLES} "
        "interleaved pairs at concurrency 1",
        rounds=ROUNDS,
    )
    ratio = result["hit_over_miss_throughput"]["median"]
    added = result["lookup_added_median_ms"]["median"]
    print(f"hit  {result['hit']['throughput_rps']['median']:8.1f} req/s, "
          f"median {result['hit']['median_latency_ms']['median']:.2f} ms")  # fmt: skip
    print(f"miss {result['miss']['throughput_rps']['median']:8.1f} req/s, "
          f"median {result['miss']['median_latency_ms']['median']:.2f} ms")  # fmt: skip
    print(f"hit/miss throughput {ratio:.1f}x (target >= 10: {'met' if ratio >= 10 else 'MISSED'})")
    print(f"lookup added to a miss's median {added:+.2f} ms "
          f"(target <= 2 ms: {'met' if added <= 2 else 'MISSED'})")  # fmt: skip
    fan = result["coalescing"]
    print(f"coalescing: {FAN_IN} identical requests over {fan['replicas']} replicas -> "
          f"{fan['worker_requests']['median']:.0f} worker request(s)")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-cache.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
