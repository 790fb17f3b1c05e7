"""Gateway throughput with the interaction log on against off (issue 5: at most 5 %).

Measured on cache hits, the path where the gateway's own work is everything and a
log's cost would show most: two gateway processes, identical but for
GATEWAY_LOG_ENABLED, the same worker and Redis, rounds alternating which goes first.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import uuid
from pathlib import Path
from typing import Any

from loadtest.bench.cache import CONCURRENCY, _body, _run
from localstack.processes import NO_AUTH, LocalProcess, start_gateway, start_worker

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REQUESTS = 400


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def _measure(on: str, off: str) -> dict[str, list[float]]:
    bodies = [_body(900_000 + i % 4) for i in range(REQUESTS)]  # four photos, all hits
    for url in (on, off):
        await _run(url, bodies[:4], 1)  # fill the cache
    results: dict[str, list[float]] = {"logging_on": [], "logging_off": []}
    for round_index in range(ROUNDS):
        order = [("logging_on", on), ("logging_off", off)]
        for name, url in order if round_index % 2 == 0 else order[::-1]:
            results[name].append((await _run(url, bodies, CONCURRENCY))["throughput_rps"])
    return results


def measure(database_url: str, run_dir: Path) -> dict[str, Any]:
    processes: list[LocalProcess] = []
    try:
        worker = start_worker(run_dir)
        processes.append(worker)
        common = {"GATEWAY_CACHE_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}", **NO_AUTH}
        on = start_gateway([worker.url], run_dir, env={
            **common, "GATEWAY_LOG_DATABASE_URL": database_url})  # fmt: skip
        off = start_gateway([worker.url], run_dir, env={**common, "GATEWAY_LOG_ENABLED": "false"})
        processes += [on, off]
        runs = asyncio.run(_measure(on.url, off.url))
    finally:
        for process in reversed(processes):
            process.stop()
    ratios = [a / b for a, b in zip(runs["logging_on"], runs["logging_off"], strict=True)]
    return {
        "gateway_throughput_rps": {name: _stat(values) for name, values in runs.items()},
        "logging_on_over_off": _stat(ratios),
    }
