"""make bench (gateway CPU): milliseconds of gateway CPU per request, and where they go.

On 2 cores every millisecond the gateway spends is taken from the engine, so its CPU per
request, not its latency, is what limits "throughput through the gateway / direct". The
worker here is the echo double (``localstack/echo_worker.py``): it answers at once, so
the gateway process's CPU time (user + system, from /proc) over N requests is the
gateway's own work. The answer cache is off, so every request is validated, forwarded
and logged to MariaDB. Each variant turns one stage off, to show what it costs.

    python -m loadtest.bench_gateway_cpu

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_CPU_REQUESTS`` (2000), ``BENCH_CONCURRENCY`` (8).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_worker import machine_description
from loadtest.photos import photo
from loadtest.workload import chat_body
from localstack import echo_worker
from localstack.processes import NO_AUTH, LocalProcess, start_gateway

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_CPU_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "full image decode off": {"GATEWAY_VERIFY_IMAGE_DECODE": "false"},
    "moderation off": {"GATEWAY_MODERATION_ENABLED": "false"},
    "interaction log off": {"GATEWAY_LOG_ENABLED": "false"},
}


def _cpu_seconds(process: LocalProcess) -> float:
    fields = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _send(url: str, payload: bytes, count: int) -> int:
    """``count`` requests, CONCURRENCY at a time; returns how many got 200."""
    ok = 0
    slots = asyncio.Semaphore(CONCURRENCY)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal ok
            async with (
                slots,
                session.post(f"{url}/v1/chat/completions", data=payload, headers=headers) as r,
            ):
                await r.read()
                ok += r.status == 200

        await asyncio.gather(*(one() for _ in range(count)))
    return ok


def _measure(gateway: LocalProcess, payload: bytes) -> float:
    """Gateway CPU milliseconds per request over REQUESTS requests (after a warm-up)."""
    asyncio.run(_send(gateway.url, payload, 200))
    before = _cpu_seconds(gateway)
    ok = asyncio.run(_send(gateway.url, payload, REQUESTS))
    if ok != REQUESTS:
        raise RuntimeError(f"{REQUESTS - ok} of {REQUESTS} requests failed")
    return (_cpu_seconds(gateway) - before) * 1000 / REQUESTS


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-gateway-cpu"
    body: dict[str, Any] = chat_body(
        "qwen3-vl-tiny", [photo(7, "listing", "bag")], "Is this bag real leather?",
        max_tokens=32, temperature=0.7, stream=False,
    )  # fmt: skip
    payload = json.dumps(body).encode()
    print(f"machine: {machine_description()}")
    print(
        f"gateway CPU per request: {REQUESTS} chat requests (640x480 JPEG, {len(payload):,} "
        f"bytes), {CONCURRENCY} at a time, cache off, echo worker; median of {ROUNDS} rounds"
    )
    worker = echo_worker.start(run_dir)
    base_env = {**NO_AUTH, "GATEWAY_CACHE_ENABLED": "false"}
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(ROUNDS):
            for name, env in VARIANTS.items():
                gateway = start_gateway([worker.url], run_dir, env={**base_env, **env})
                try:
                    results[name].append(_measure(gateway, payload))
                finally:
                    gateway.stop()
    finally:
        worker.stop()
    defaults = statistics.median(results["defaults"])
    print(f"{'variant':<24} {'CPU ms/request':>15} {'(min-max)':>14} {'saves':>8}")
    for name, values in results.items():
        median = statistics.median(values)
        saves = "" if name == "defaults" else f"{defaults - median:+.2f}"
        spread = f"({min(values):.2f}-{max(values):.2f})"
        print(f"{name:<24} {median:>15.2f} {spread:>14} {saves:>8}")


if __name__ == "__main__":
    main()
