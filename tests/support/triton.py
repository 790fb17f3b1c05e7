"""The session's real Triton worker (triton-cpu-tiny, started by the triton_worker fixture
in tests/conftest.py): where it is, how the gateway is told about it, its metrics."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from localstack.processes import LocalProcess, free_port, start_worker
from tests.support.worker import LOG_DIR, WORKER_STARTUP_TIMEOUT_S, metric_total
from worker.triton.pools import triton_pool

TRITON_PROFILE = "triton-cpu-tiny"


@dataclass
class TritonWorker:
    """A Triton worker (its launcher's process when this session started it). A drill
    that kills it calls ensure_running() afterwards only when the session goes on."""

    url: str
    metrics_port_offset: int
    process: LocalProcess | None = None

    @property
    def metrics_url(self) -> str:
        port = int(self.url.rsplit(":", 1)[1]) + self.metrics_port_offset
        return f"http://127.0.0.1:{port}/metrics"

    def pool(self, name: str = "default", **extra: Any) -> dict[str, Any]:
        """This worker as a gateway pool (engine triton)."""
        return {**triton_pool(TRITON_PROFILE, [self.url], self.metrics_port_offset, name), **extra}

    def pools_env(self) -> dict[str, str]:
        """GATEWAY_WORKER_POOLS for a gateway process with this worker alone."""
        return {"GATEWAY_WORKER_POOLS": json.dumps([self.pool()])}

    def ensure_running(self) -> None:
        if self.process is None or self.process.process.poll() is None:
            return
        started = start_triton()
        self.url, self.process = started.url, started.process
        self.metrics_port_offset = started.metrics_port_offset

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=90)


def start_triton() -> TritonWorker:
    """A Triton worker on free ports, through the launcher `make up` uses (raises
    StartError)."""
    reuse = os.environ.get("VLM_TEST_TRITON_URL")  # "http://host:port,metrics-offset"
    if reuse:
        url, offset = reuse.rsplit(",", 1)
        return TritonWorker(url.rstrip("/"), int(offset))
    port, metrics_port = free_port(), free_port()
    process = start_worker(
        LOG_DIR,
        port=port,
        profile=TRITON_PROFILE,
        timeout_s=WORKER_STARTUP_TIMEOUT_S,
        env={
            "WORKER_METRICS_PORT": str(metrics_port),
            "WORKER_RUN_DIR": str(LOG_DIR / f"triton-{port}"),
        },
    )
    return TritonWorker(process.url, metrics_port - port, process)


async def settled_triton_metric(
    worker: TritonWorker, name: str, quiet_s: float = 1.0, **labels: str
) -> float:
    """The metric once it has stopped moving for ``quiet_s``: the engine's counters are
    updated after its step, so an earlier test's last request can still land in them."""
    value = await triton_metric(worker, name, **labels)
    deadline = time.monotonic() + 30
    steady_since = time.monotonic()
    while time.monotonic() - steady_since < quiet_s:
        assert time.monotonic() < deadline, f"{name} never settled"
        await asyncio.sleep(0.1)
        now = await triton_metric(worker, name, **labels)
        if now != value:
            value, steady_since = now, time.monotonic()
    return value


async def triton_metric(worker: TritonWorker, name: str, **labels: str) -> float:
    """A metric of the Triton worker summed over the label sets that match ``labels``.
    The timeout is generous: while the worker generates, this process can wait seconds for
    the CPU (docs/TRITON.md), and httpx's 5 s default then fails even a local connect."""
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(worker.metrics_url)).text
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    lines = [line for line in text.splitlines() if all(w in line for w in wanted)]
    return metric_total("\n".join(lines), name)
