"""make bench (issue 15): event-loop lag of one replica under the largest bodies the limits
allow, and the coalescing drills' figures.

Event-loop lag: one gateway process (echo worker behind it, cache and log off) is probed
with GET /healthz every 20 ms; the probe's latency is what any other request, health
checks included, waits for the event loop. Measured idle, then while two clients send, in
turn, the largest bodies the limits allow, to every endpoint that reads a body:

* ``messages``: as many one-character messages as the prompt limit allows with the
  per-message overhead (1,000 by default): validated, forwarded, answered;
* ``pixels``: two 4096 x 4096 palette PNGs (a few KB each, 16.7 M pixels to decode);
* ``empty``: 300,000 empty messages in 10 MB (refused at the message count);
* ``text``: 15 MB of text in one message (refused at the prompt limit);
* ``values``: 340,000 empty arrays in a body just under 1 MiB (refused: unknown field);
* ``vqa-pixels``: /v1/vqa with a 4096 x 4096 palette PNG;
* ``vqa-values``: /v1/vqa with 15 MB of empty arrays (5 million values; refused).

Coalescing: loadtest/bench/coalesce_drills.py, ``DRILL_ROUNDS`` times each.

    python -m loadtest.bench.hardening

Environment: ``LAG_SECONDS`` (15 per phase), ``LAG_BODIES`` (all kinds, or a comma-separated
list), ``DRILL_ROUNDS`` (2), ``RUN_DIR``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from loadtest.bench.coalesce_drills import DrillResult, kill_the_leader, the_leader_hangs_up
from localstack import echo_worker
from localstack.echo_worker import MODEL
from localstack.processes import NO_AUTH, start_gateway

LAG_SECONDS = float(os.environ.get("LAG_SECONDS", "15"))
DRILL_ROUNDS = int(os.environ.get("DRILL_ROUNDS", "2"))
PROBE_EVERY_S = 0.02
CHAT = "/v1/chat/completions"
VQA = "/v1/vqa"


def _palette_png(side: int = 4096) -> str:
    out = io.BytesIO()
    Image.new("P", (side, side), 0).save(out, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def bodies() -> dict[str, tuple[str, bytes]]:
    """The largest bodies the default limits allow, one per kind of work and endpoint:
    name -> (path, body)."""
    png = _palette_png()
    image = {"type": "image_url", "image_url": {"url": png}}
    question = {"type": "text", "text": "Is this bag real leather?"}
    one = [{"role": "user", "content": "x"}]
    chat: dict[str, Any] = {
        "messages": {"messages": one * 1000},
        "pixels": {"messages": [{"role": "user", "content": [image, image, question]}]},
        "empty": {"messages": [{"role": "user", "content": ""}] * 300_000},
        "text": {"messages": [{"role": "user", "content": "x" * (15 * 1024 * 1024)}]},
        "values": {"messages": one, "x": [[]] * 340_000},
    }
    vqa: dict[str, Any] = {
        "vqa-pixels": {"image": png, "prompt": "Is this bag real leather?"},
        "vqa-values": {"image": "x", "prompt": "y", "x": [[]] * (5 * 1024 * 1024)},
    }
    kinds = [(CHAT, chat, {"model": MODEL, "temperature": 0}), (VQA, vqa, {})]
    return {
        name: (path, json.dumps({**base, "max_tokens": 8, **body}, separators=(",", ":")).encode())
        for path, bodies_of, base in kinds
        for name, body in bodies_of.items()
    }


async def _probe(client: httpx.AsyncClient, url: str, until: float) -> list[float]:
    lags: list[float] = []
    while time.monotonic() < until:
        started = time.perf_counter()
        await client.get(url + "/healthz")
        lags.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(PROBE_EVERY_S)
    return lags


async def _sender(
    client: httpx.AsyncClient, url: str, payloads: list[tuple[str, tuple[str, bytes]]],
    until: float, counts: dict[str, dict[int, int]], offset: int,
) -> None:  # fmt: skip
    headers = {"Content-Type": "application/json"}
    turn = offset
    while time.monotonic() < until:
        name, (path, payload) = payloads[turn % len(payloads)]
        turn += 1
        response = await client.post(url + path, content=payload, headers=headers)
        per_status = counts.setdefault(name, {})
        per_status[response.status_code] = per_status.get(response.status_code, 0) + 1


def _summary(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        "probes": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


async def event_loop_lag(run_dir: Path) -> dict[str, Any]:
    worker = await asyncio.to_thread(echo_worker.start, run_dir)
    env = {**NO_AUTH, "GATEWAY_CACHE_ENABLED": "false", "GATEWAY_LOG_ENABLED": "false"}
    gateway = await asyncio.to_thread(start_gateway, [worker.url], run_dir, env=env)
    chosen = os.environ.get("LAG_BODIES")  # e.g. "empty,text": only those kinds
    payloads = [(k, v) for k, v in bodies().items() if not chosen or k in chosen.split(",")]
    try:
        async with httpx.AsyncClient(timeout=120) as probe, httpx.AsyncClient(timeout=120) as load:
            idle = await _probe(probe, gateway.url, time.monotonic() + LAG_SECONDS)
            until = time.monotonic() + LAG_SECONDS
            counts: dict[str, dict[int, int]] = {}
            senders = [_sender(load, gateway.url, payloads, until, counts, i) for i in range(2)]
            probing = asyncio.ensure_future(_probe(probe, gateway.url, until))
            await asyncio.gather(probing, *senders)
            busy = probing.result()
    finally:
        gateway.stop()
        worker.stop()
    return {"idle": _summary(idle), "loaded": _summary(busy), "requests": counts}


def _drill_line(name: str, results: list[DrillResult]) -> str:
    seconds = [r.seconds_to_last_answer for r in results]
    extra = [r.extra_worker_requests for r in results]
    answered = sum(r.answered for r in results)
    waiters = sum(r.waiters for r in results)
    first = results[0]
    return (
        f"{name:34} {answered}/{waiters} answered  last answer after "
        f"{statistics.median(seconds):.2f} s (max {max(seconds):.2f})  extra worker "
        f"requests {max(extra)} (lease {first.lease_s:g} s, generation {first.generation_s:g} s)"
    )


async def main(run_dir: Path) -> None:
    lag = await event_loop_lag(run_dir)
    print(f"event-loop lag of one replica (GET /healthz every {PROBE_EVERY_S * 1000:.0f} ms, "
          f"{LAG_SECONDS:g} s per phase)")  # fmt: skip
    print(f"{'phase':8} {'probes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for phase in ("idle", "loaded"):
        s = lag[phase]
        print(
            f"{phase:8} {s['probes']:>7} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
            f"{s['max_ms']:>8.1f}"
        )
    print("bodies sent while loaded (status: count): " + json.dumps(lag["requests"]))
    if DRILL_ROUNDS < 1:
        return
    kills = [await kill_the_leader(run_dir) for _ in range(DRILL_ROUNDS)]
    hangups = [await the_leader_hangs_up(run_dir) for _ in range(DRILL_ROUNDS)]
    print("coalescing drills (two replicas, private Redis, 8 waiters)")
    print(_drill_line("SIGKILL of the leader's replica", kills))
    print(_drill_line("the leader's client hangs up", hangups))


if __name__ == "__main__":
    RUN = Path(os.environ.get("RUN_DIR", ".run")).resolve() / "bench-hardening"
    RUN.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(RUN))
