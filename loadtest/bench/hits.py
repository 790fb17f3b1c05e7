"""make bench (hits): a cached answer through Nginx + 2 gateways against a static Nginx,
for the body sizes shoppers send, code trees side by side.

The same question about one photo, HIT_REQUESTS times at concurrency 16 from one aiohttp
client (as loadtest/bench/anchors.py), against Nginx returning the same answer as a
static file (the ceiling) and against Nginx in front of 2 gateways of each code tree
(``BENCH_TREES=before=DIR,after=DIR``; loadtest/bench/trees.py) with everything on (a
real API key and its limits, moderation, the answer cache, the interaction log). Bodies:
the anchors' 160x120 PNG, and shoppers' photos: a 640x480 JPEG listing photo and a
960x1280 JPEG phone photo. Endpoints alternate over rounds; the share of the ceiling is
taken per round (target >= 0.35, issue 16). The worker is the echo double: a hit never
reaches it.

    python -m loadtest.bench.hits

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_DATABASE_URL``. Writes
loadtest/results/bench-hits.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from loadtest.bench.anchor_servers import start_static_nginx
from loadtest.bench.anchors import HIT_REQUESTS, create_bench_key, hit_run
from loadtest.bench.cache import _body as anchors_body
from loadtest.bench.trees import start_gateway_in, trees
from loadtest.bench.worker import machine_description
from loadtest.locust.photos import photo
from loadtest.locust.workload import chat_body
from localstack import echo_worker
from localstack.processes import LocalProcess, start_nginx
from worker.profiles import REPO_ROOT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "mysql://vlm:vlm@127.0.0.1:3306/vlm_bench")
TARGET_SHARE = 0.35
STATIC = "nginx static"
RESULTS = REPO_ROOT / "loadtest" / "results"


def bodies() -> dict[str, bytes]:
    photos = {"640x480 JPEG": photo(7, "listing", "bag"), "960x1280 JPEG": photo(8, "phone")}
    found = {"160x120 PNG": anchors_body(seed=16)}
    for name, picture in photos.items():
        body = chat_body("qwen3-vl-tiny", [picture], "Is this bag real leather?",
                         max_tokens=16, temperature=0, stream=False)  # fmt: skip
        found[name] = json.dumps(body).encode()
    return {f"{name}, {len(body) // 1024} KB body": body for name, body in found.items()}


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")).resolve() / "bench-hits"
    key = create_bench_key()
    code = trees()
    worker = echo_worker.start(run_dir)
    processes: list[LocalProcess] = [worker]
    endpoints: dict[str, str] = {}
    try:
        for tree_name, tree in code.items():
            env = {
                "GATEWAY_LOG_DATABASE_URL": DATABASE_URL,
                "GATEWAY_CACHE_NAMESPACE": f"hits{uuid.uuid4().hex[:8]}",
            }
            gateways = [start_gateway_in(tree, [worker.url], run_dir, env) for _ in range(2)]
            nginx = start_nginx([f"127.0.0.1:{g.port}" for g in gateways], run_dir)
            processes += [*gateways, nginx]
            endpoints[f"nginx+2 gateways [{tree_name}]" if tree_name else "nginx+2 gateways"] = (
                nginx.url
            )
        # The ceiling answers with our own answer's bytes.
        static = start_static_nginx(_answer(next(iter(endpoints.values())), key), run_dir)
        processes.append(static)
        endpoints = {STATIC: static.url, **endpoints}
        print(f"machine: {machine_description()}")
        print(f"hits: the same question {HIT_REQUESTS} times at concurrency 16, {ROUNDS} rounds")
        results = _rounds(endpoints, bodies(), key)
    finally:
        for process in reversed(processes):
            process.stop()
    _report(results)


def _answer(url: str, key: str) -> bytes:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=anchors_body(seed=16),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _rounds(
    endpoints: dict[str, str], payloads: dict[str, bytes], key: str
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    names = list(endpoints)
    for body_name, body in payloads.items():
        for url in endpoints.values():  # warm: stored, links open
            asyncio.run(hit_run(url, body, key, 64))
        per_endpoint: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_index in range(ROUNDS):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                run = asyncio.run(hit_run(endpoints[name], body, key, HIT_REQUESTS))
                per_endpoint[name].append(run)
                figure = f"{run['throughput_rps']:.0f} req/s {run['outcomes']}"
                print(
                    f"  {body_name}: round {round_index + 1}/{ROUNDS} {name:<28} {figure}",
                    flush=True,
                )
        results[body_name] = per_endpoint
    return results


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    summary: dict[str, Any] = {}
    targets = []
    print(f"{'body':<28}{'endpoint':<30}{'req/s':>8}{'/ static':>10}{'(min-max)':>15}")
    for body_name, per_endpoint in results.items():
        ceiling = per_endpoint[STATIC]
        summary[body_name] = {}
        for name, runs in per_endpoint.items():
            shares = [
                r["throughput_rps"] / c["throughput_rps"]
                for r, c in zip(runs, ceiling, strict=True)
            ]
            share = _stat(shares)
            summary[body_name][name] = {
                "throughput_rps": _stat([r["throughput_rps"] for r in runs]),
                "share_of_static": share,
            }
            spread = f"({share['min']:.3f}-{share['max']:.3f})"
            rps = summary[body_name][name]["throughput_rps"]["median"]
            print(f"{body_name:<28}{name:<30}{rps:>8.0f}{share['median']:>10.3f}{spread:>15}")
            if name != STATIC:
                targets.append({
                    "name": f"Hits, {body_name}: {name} / static Nginx (issue 24)",
                    "threshold": f"≥ {TARGET_SHARE:.2f}", "measured": f"{share['median']:.3f}",
                    "met": share["median"] >= TARGET_SHARE,
                })  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-hits.json").write_text(json.dumps({
        "machine": machine_description(),
        "workload": f"one question {HIT_REQUESTS} times at concurrency 16 per body, "
                    "Nginx + 2 gateways (everything on, a real API key) against static Nginx",
        "rounds": ROUNDS, "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "summary": summary, "targets": targets,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
