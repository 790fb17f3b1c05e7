"""The session's real vLLM worker (cpu-tiny, started by the worker_url fixture in
tests/conftest.py): its served name, where test processes log, how long it may take to
start, and reading its own metrics: what tests count to know whether it was called."""

from __future__ import annotations

import asyncio

import httpx

from worker.profiles import REPO_ROOT

LOG_DIR = REPO_ROOT / ".run" / "test-logs"
TINY_MODEL_NAME = "qwen3-vl-tiny"
WORKER_STARTUP_TIMEOUT_S = 600.0


def metric_total(metrics_text: str, name: str) -> float:
    """Sum of a metric's samples over all its label sets."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


async def finished_requests(worker_url: str) -> float:
    """Requests the worker has finished (vLLM's vllm:request_success_total)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{worker_url}/metrics")).text
    return metric_total(text, "vllm:request_success_total")


async def worker_state(http: httpx.AsyncClient, worker_url: str) -> tuple[float, float, float]:
    """(requests running, requests finished, tokens generated) from the worker's metrics.

    vLLM counts an aborted request under none of its finish reasons: an aborted generation
    shows as tokens generated beyond the finished requests' own."""
    text = (await http.get(f"{worker_url}/metrics")).text
    return (
        metric_total(text, "vllm:num_requests_running"),
        metric_total(text, "vllm:request_success_total"),
        metric_total(text, "vllm:generation_tokens_total"),
    )


async def idle_state(http: httpx.AsyncClient, worker_url: str) -> tuple[float, float, float]:
    """The worker's state once nothing runs and its counters stopped moving."""
    last = await worker_state(http, worker_url)
    for _ in range(300):
        await asyncio.sleep(0.1)
        now = await worker_state(http, worker_url)
        if now == last and now[0] == 0:
            return now
        last = now
    raise AssertionError(f"worker never went idle: {last}")
