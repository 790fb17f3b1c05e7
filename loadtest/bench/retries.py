"""make bench (retries): mobile clients that time out and retry, with and without an
Idempotency-Key (issue 27).

One gateway process (Redis on, API keys off) in front of a cpu-tiny vLLM worker. Each of
``BENCH_CLIENTS`` clients asks a sampled question (temperature 1, ``BENCH_TOKENS`` tokens
with ignore_eos: one generation is exactly that many tokens) with a read timeout of
``BENCH_TIMEOUT_S``, shorter than the generation, as an SDK with a short timeout does;
on a timeout it retries, up to ``BENCH_RETRIES`` times, and its last try waits for the
answer. The same run with one Idempotency-Key per client and without, twice each. Printed from the
worker's own metrics: tokens generated per answer (1.00 = one generation per answer) and
requests finished, and the clients' time to their answer.

    python -m loadtest.bench.retries

Environment: ``BENCH_WORKER_URL`` (reuse a running cpu-tiny worker; else one is started),
``BENCH_CLIENTS`` (4), ``BENCH_TOKENS`` (600), ``BENCH_TIMEOUT_S`` (0.5),
``BENCH_RETRIES`` (3), ``RUN_DIR`` (.run).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from localstack.processes import NO_AUTH, LocalProcess, start_gateway, start_worker

CHAT = "/v1/chat/completions"
MODEL = "qwen3-vl-tiny"


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


async def _worker_counts(http: httpx.AsyncClient, worker_url: str) -> tuple[float, float, float]:
    """(running, finished, generated tokens), once nothing runs and the counters settled."""
    last = (-1.0, -1.0, -1.0)
    for _ in range(600):
        text = (await http.get(f"{worker_url}/metrics")).text
        now = (
            _metric(text, "vllm:num_requests_running"),
            _metric(text, "vllm:request_success_total"),
            _metric(text, "vllm:generation_tokens_total"),
        )
        if now == last and now[0] == 0:
            return now
        last = now
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker never went idle: {last}")


async def _client(
    gateway: str, body: dict[str, Any], key: str | None, timeout_s: float, retries: int
) -> tuple[float, int, str]:
    """(seconds to the answer, tries, X-Cache of the answer)."""
    headers = {"Idempotency-Key": key} if key else {}
    started = time.perf_counter()
    for attempt in range(retries + 1):
        last = attempt == retries
        timeout = httpx.Timeout(600.0 if last else timeout_s, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                response = await client.post(gateway + CHAT, json=body, headers=headers)
            except httpx.TimeoutException:
                continue  # the SDK's retry: a new connection, the same request
            response.raise_for_status()
            return time.perf_counter() - started, attempt + 1, response.headers["x-cache"]
    raise RuntimeError("unreachable: the last try has no short timeout")


async def _run(gateway: str, worker_url: str, keyed: bool) -> dict[str, Any]:
    clients = int(os.environ.get("BENCH_CLIENTS", "4"))
    tokens = int(os.environ.get("BENCH_TOKENS", "600"))
    timeout_s = float(os.environ.get("BENCH_TIMEOUT_S", "0.5"))
    retries = int(os.environ.get("BENCH_RETRIES", "3"))
    async with httpx.AsyncClient(timeout=30) as http:
        before = await _worker_counts(http, worker_url)
        runs = [
            _client(
                gateway,
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"is this real leather? #{i}"}],
                    "max_tokens": tokens,
                    "ignore_eos": True,
                    "temperature": 1.0,
                },
                str(uuid.uuid4()) if keyed else None,
                timeout_s,
                retries,
            )
            for i in range(clients)
        ]
        results = await asyncio.gather(*runs)
        after = await _worker_counts(http, worker_url)
    seconds = [r[0] for r in results]
    return {
        "keyed": keyed,
        "clients": clients,
        "tries": sum(r[1] for r in results),
        "x_cache": sorted({r[2] for r in results}),
        "finished": after[1] - before[1],
        "tokens_per_answer": (after[2] - before[2]) / (clients * tokens),
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
    }


async def _main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run"))
    log_dir = run_dir / "bench-retries"
    log_dir.mkdir(parents=True, exist_ok=True)
    worker: LocalProcess | None = None
    worker_url = os.environ.get("BENCH_WORKER_URL", "").rstrip("/")
    if not worker_url:
        worker = await asyncio.to_thread(start_worker, log_dir)
        worker_url = worker.url
    env = {
        **NO_AUTH,
        "GATEWAY_CACHE_NAMESPACE": f"bench-retries-{uuid.uuid4().hex[:8]}",
        "GATEWAY_LOG_ENABLED": "false",
        "GATEWAY_MAX_TOKENS_CAP": "2048",
    }
    gateway = await asyncio.to_thread(start_gateway, [worker_url], log_dir, env=env)
    try:
        print("retries: clients with a short read timeout retry a sampled request (issue 27)")
        header = (
            "Idempotency-Key  clients  tries  finished  tokens/answer  median s  max s  X-Cache"
        )
        print(header)
        async with httpx.AsyncClient(timeout=120) as http:  # warm: connections, first parse
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            (await http.post(gateway.url + CHAT, json=body)).raise_for_status()
        # Both orders: the machine's load drifts over a run.
        for keyed in (False, True, True, False):
            r = await _run(gateway.url, worker_url, keyed)
            print(
                f"{'yes' if keyed else 'no':<15}  {r['clients']:>7}  {r['tries']:>5}  "
                f"{r['finished']:>8.0f}  {r['tokens_per_answer']:>13.2f}  {r['median_s']:>8.2f}  "
                f"{r['max_s']:>5.2f}  {','.join(r['x_cache'])}"
            )
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()


if __name__ == "__main__":
    asyncio.run(_main())
