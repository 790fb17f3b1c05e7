"""make bench (Triton): Triton beside vLLM's own OpenAI server, same model, same machine.

One cpu-tiny vLLM worker and one triton-cpu-tiny worker (Triton 2.51 with our Python-backend
model driving the same vLLM engine), each pinned to its own core, and one gateway per
engine (answer cache off: every request is a miss that reaches the engine). Each round
measures both engines, alternating which goes first, and takes every ratio within the
round; the summary is median (min-max) over rounds:

* miss throughput through our stack over direct: a closed loop of ``CONCURRENCY`` clients
  sending a chat request with a 640x480 photo, through the gateway, then straight to the
  engine (vLLM: /v1/chat/completions; Triton: generate_stream with the prompt the gateway
  renders, so the direct figure carries no gateway work);
* added TTFT: the median time to the first content event of sequential streamed requests,
  through the gateway minus direct;
* Triton's own overhead per request: Triton direct minus vLLM direct, for the median
  latency of sequential non-streamed requests and for the TTFT.

Writes ``loadtest/results/bench-triton.json``. Environment: ``BENCH_ROUNDS`` (3),
``BENCH_REPEAT_SECONDS`` (8), ``BENCH_TRITON_CONCURRENCY`` (4), ``BENCH_SEQUENTIAL`` (12),
``BENCH_MAX_TOKENS`` (32).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.upstream.kserve.engine import TritonEngine
from gateway.upstream.settings import TritonPool
from loadtest.bench.worker import machine_description
from loadtest.locust.photos import photo
from loadtest.locust.workload import chat_body
from localstack.processes import NO_AUTH, LocalProcess, free_port, start_gateway, start_worker
from worker.triton.pools import triton_pool

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_REPEAT_SECONDS", "8"))
CONCURRENCY = int(os.environ.get("BENCH_TRITON_CONCURRENCY", "4"))
SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "12"))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "32"))
MODEL = "qwen3-vl-tiny"
RESULTS = Path("loadtest/results")
GATEWAY_ENV = {**NO_AUTH, "GATEWAY_CACHE_ENABLED": "false", "GATEWAY_LOG_ENABLED": "false"}


@dataclass(frozen=True)
class Target:
    """Where a request goes, what it sends, and how its first content event looks."""

    url: str
    body: bytes
    content_marker: bytes  # in a streamed event that carries generated text


def _openai(url: str, body: dict[str, Any], stream: bool) -> Target:
    payload = {**body, "stream": stream}
    return Target(url + "/v1/chat/completions", json.dumps(payload).encode(), b'"content":"')


async def _triton_direct(worker_url: str, pool: TritonPool, body: dict[str, Any],
                         stream: bool) -> Target:  # fmt: skip
    call = await TritonEngine(pool).call(json.dumps({**body, "stream": stream}).encode())
    return Target(worker_url + call.path, call.body, b'"text_output":"')


async def _closed_loop(session: aiohttp.ClientSession, target: Target) -> float:
    """Successful requests per second from CONCURRENCY clients for SECONDS."""
    done = 0
    stop = time.monotonic() + SECONDS

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.post(target.url, data=target.body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{target.url}: {response.status}")
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done / (time.monotonic() - started)


async def _sequential(session: aiohttp.ClientSession, target: Target, stream: bool) -> float:
    """Median milliseconds to the first content event (stream) or to the whole answer."""
    times = []
    for _ in range(SEQUENTIAL):
        started = time.perf_counter()
        async with session.post(target.url, data=target.body) as response:
            if stream:
                async for line in response.content:
                    if target.content_marker in line and b'"content":""' not in line:
                        break
            else:
                await response.read()
            if response.status != 200:
                raise RuntimeError(f"{target.url}: {response.status}")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def _measure(targets: dict[str, dict[str, Target]]) -> dict[str, dict[str, float]]:
    """One engine's figures: throughput and latency through the stack and direct."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=300), headers={"Content-Type": "application/json"}
    ) as session:
        for way in ("stack", "direct"):  # warm both paths (first requests compile kernels)
            await _sequential(session, targets[way]["plain"], stream=False)
        out: dict[str, dict[str, float]] = {}
        for way in ("stack", "direct"):
            out[way] = {
                "throughput_rps": await _closed_loop(session, targets[way]["plain"]),
                "latency_ms": await _sequential(session, targets[way]["plain"], stream=False),
                "ttft_ms": await _sequential(session, targets[way]["stream"], stream=True),
            }
        return out


async def _run(vllm: LocalProcess, triton: LocalProcess, offset: int) -> dict[str, Any]:
    body = chat_body(MODEL, [photo(7, "listing", "bag")], "Is this bag real leather?",
                     max_tokens=MAX_TOKENS, temperature=0.0, stream=False)  # fmt: skip
    body.update(min_tokens=MAX_TOKENS, ignore_eos=True)  # same work for both engines
    pool_spec = triton_pool("triton-cpu-tiny", [triton.url], offset)
    pool = TritonPool.model_validate(pool_spec["triton"])
    gateways = {
        "vllm": start_gateway([vllm.url], vllm.log_path.parent, env=GATEWAY_ENV),
        "triton": start_gateway([], triton.log_path.parent, env={**GATEWAY_ENV,
            "GATEWAY_WORKER_URLS": "", "GATEWAY_WORKER_POOLS": json.dumps([pool_spec])}),
    }  # fmt: skip
    try:
        targets = {
            engine: {
                "stack": {s: _openai(gateways[engine].url, body, s == "stream")
                          for s in ("plain", "stream")},
            }
            for engine in ("vllm", "triton")
        }  # fmt: skip
        targets["vllm"]["direct"] = {s: _openai(vllm.url, body, s == "stream")
                                     for s in ("plain", "stream")}  # fmt: skip
        targets["triton"]["direct"] = {
            s: await _triton_direct(triton.url, pool, body, s == "stream")
            for s in ("plain", "stream")
        }
        rounds = []
        for n in range(ROUNDS):
            order = ("vllm", "triton") if n % 2 == 0 else ("triton", "vllm")
            figures = {engine: await _measure(targets[engine]) for engine in order}
            rounds.append(figures)
            print(f"round {n + 1}: {json.dumps(figures)}", flush=True)
        return {"rounds": rounds, "summary": _summary(rounds)}
    finally:
        for gateway in gateways.values():
            gateway.stop()


def _summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    def over(f: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        return _stat([f(r) for r in rounds])

    summary = {}
    for engine in ("vllm", "triton"):

        def ratio(r: dict[str, Any], e: str = engine) -> float:
            return float(r[e]["stack"]["throughput_rps"] / r[e]["direct"]["throughput_rps"])

        def added(r: dict[str, Any], e: str = engine) -> float:
            return float(r[e]["stack"]["ttft_ms"] - r[e]["direct"]["ttft_ms"])

        summary[f"{engine}: miss throughput, stack / direct"] = over(ratio)
        summary[f"{engine}: added TTFT, stack - direct (ms)"] = over(added)
    summary["triton's own overhead per request, latency (ms)"] = over(
        lambda r: r["triton"]["direct"]["latency_ms"] - r["vllm"]["direct"]["latency_ms"]
    )
    summary["triton's own overhead, TTFT (ms)"] = over(
        lambda r: r["triton"]["direct"]["ttft_ms"] - r["vllm"]["direct"]["ttft_ms"]
    )
    summary["direct throughput, triton / vllm"] = over(
        lambda r: r["triton"]["direct"]["throughput_rps"] / r["vllm"]["direct"]["throughput_rps"]
    )
    return summary


def main() -> None:
    log_dir = Path(os.environ.get("RUN_DIR", ".run")).resolve() / "bench-triton"
    # One core each, so the engine that is not measured cannot slow the one that is.
    vllm = start_worker(log_dir, env={"WORKER_CPU_THREADS_BIND": "0"})
    triton: LocalProcess | None = None
    try:
        metrics_port = free_port()
        port = free_port()
        triton = start_worker(
            log_dir, port=port, profile="triton-cpu-tiny",
            env={"WORKER_CPU_THREADS_BIND": "1", "WORKER_METRICS_PORT": str(metrics_port),
                 "WORKER_RUN_DIR": str(log_dir / "triton")},
        )  # fmt: skip
        result = asyncio.run(_run(vllm, triton, metrics_port - port))
    finally:
        vllm.stop()
        if triton is not None:
            triton.stop(timeout=90)
    result.update(
        when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine_description(),
        settings={"rounds": ROUNDS, "seconds": SECONDS, "concurrency": CONCURRENCY,
                  "sequential": SEQUENTIAL, "max_tokens": MAX_TOKENS},
    )  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-triton.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\nTriton beside vLLM (median, min-max over rounds):")
    for name, stat in result["summary"].items():
        print(f"  {name}: {stat['median']:.3g} ({stat['min']:.3g}-{stat['max']:.3g})")


if __name__ == "__main__":
    main()
