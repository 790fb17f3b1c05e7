"""make bench (gateway CPU): milliseconds of gateway CPU per request, and where they go.

On 2 cores every millisecond the gateway spends is taken from the engine, so its CPU per
request, not its latency, is what limits "throughput through the gateway / direct". The
worker here is the echo double (``localstack/echo_worker.py``): it answers at once, so
the gateway process's CPU time (user + system, from /proc) over N requests is the
gateway's own work.

Miss variants: the answer cache off, so every request is validated, forwarded and logged
to MariaDB; each variant turns one stage off, to show what it costs. Each miss carries a
photo the gateway has not seen (the same pixels, with a JPEG comment of its own), so its
full decode is paid every time; "miss, repeated photo" sends one photo throughout, as
when several questions are asked about one product, which the gateway decodes once.
Hit variants: the cache on and the same request every time (after a warm-up that stores it), so each
request is a lookup and a replay; "+ key" adds a real API key with its rate limits
(Redis) and concurrency lease, as in production.

    python -m loadtest.bench.gateway_cpu

A/B between gateway code trees (copies of the repository, e.g. before and after a
change), alternating within each round: ``BENCH_TREES=before=/tmp/a,after=/tmp/b``.

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_CPU_REQUESTS`` (2000), ``BENCH_CONCURRENCY`` (8),
``BENCH_VARIANTS`` (names separated by semicolons, as names hold commas; default all),
``BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtest.bench.worker import machine_description
from loadtest.locust.photos import Photo, photo
from loadtest.locust.workload import chat_body
from localstack import echo_worker
from localstack.processes import (
    GATEWAY_PYTHON,
    LocalProcess,
    free_port,
    wait_http_ok,
)
from worker.profiles import REPO_ROOT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_CPU_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "mysql://vlm:vlm@127.0.0.1:3306/vlm_bench")
NO_CACHE = {"GATEWAY_CACHE_ENABLED": "false"}
NO_AUTH = {"GATEWAY_AUTH_ENABLED": "false"}
STREAM_WORDS = 32  # chunks of a streamed answer (the anchors' misses ask for 32 tokens)


@dataclass(frozen=True)
class Variant:
    env: dict[str, str] = field(default_factory=dict)
    hit: bool = False  # the same request again and again, answered from the cache
    key: bool = False  # a real API key, rate limits and the concurrency lease on
    new_photos: bool = True  # a miss: a photo the gateway has not decoded yet, each time
    stream: bool = False  # server-sent events: STREAM_WORDS chunks, as for 32 tokens


VARIANTS: dict[str, Variant] = {
    "miss": Variant({**NO_CACHE, **NO_AUTH}),
    "miss, decode check off": Variant(
        {**NO_CACHE, **NO_AUTH, "GATEWAY_VERIFY_IMAGE_DECODE": "false"}
    ),
    "miss, moderation off": Variant({**NO_CACHE, **NO_AUTH, "GATEWAY_MODERATION_ENABLED": "false"}),
    "miss, log off": Variant({**NO_CACHE, **NO_AUTH, "GATEWAY_LOG_ENABLED": "false"}),
    "miss, repeated photo": Variant({**NO_CACHE, **NO_AUTH}, new_photos=False),
    "miss, streamed": Variant({**NO_CACHE, **NO_AUTH}, stream=True),
    "miss + key": Variant(NO_CACHE, key=True),
    "hit": Variant(NO_AUTH, hit=True),
    "hit, moderation off": Variant({**NO_AUTH, "GATEWAY_MODERATION_ENABLED": "false"}, hit=True),
    "hit, log off": Variant({**NO_AUTH, "GATEWAY_LOG_ENABLED": "false"}, hit=True),
    "hit, coalescing off": Variant({**NO_AUTH, "GATEWAY_COALESCE_ENABLED": "false"}, hit=True),
    "hit + key": Variant({}, hit=True, key=True),
}


def _cpu_seconds(process: LocalProcess) -> float:
    fields = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Payloads:
    """The request bodies: one photo's question, with the photo's bytes made unique per
    request when ``unique`` (a JPEG comment segment after the start marker: the pixels,
    and so the decode's cost, stay the same; the digest does not)."""

    def __init__(self, jpeg: Photo, unique: bool, stream: bool = False) -> None:
        self._jpeg = jpeg.data
        self._unique = unique
        self._count = 0
        self._body = chat_body(
            "qwen3-vl-tiny", [jpeg], "Is this bag real leather?",
            max_tokens=32, temperature=0, stream=stream,
        )  # fmt: skip
        self._image: dict[str, str] = self._body["messages"][-1]["content"][0]["image_url"]

    def next(self) -> bytes:
        data = self._jpeg
        if self._unique:
            self._count += 1
            comment = f"bench {os.getpid()} {time.time_ns()} {self._count}".encode()
            data = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            data += self._jpeg[2:]
        self._image["url"] = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        return json.dumps(self._body).encode()


async def _send(url: str, payloads: Payloads, count: int, key: str | None) -> int:
    """``count`` requests, CONCURRENCY at a time; returns how many got 200."""
    ok = 0
    slots = asyncio.Semaphore(CONCURRENCY)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal ok
            async with (
                slots,
                session.post(
                    f"{url}/v1/chat/completions", data=payloads.next(), headers=headers
                ) as r,
            ):
                await r.read()
                ok += r.status == 200

        await asyncio.gather(*(one() for _ in range(count)))
    return ok


def _measure(gateway: LocalProcess, payloads: Payloads, key: str | None) -> float:
    """Gateway CPU milliseconds per request over REQUESTS requests (after a warm-up)."""
    asyncio.run(_send(gateway.url, payloads, 200, key))
    before = _cpu_seconds(gateway)
    ok = asyncio.run(_send(gateway.url, payloads, REQUESTS, key))
    if ok != REQUESTS:
        raise RuntimeError(f"{REQUESTS - ok} of {REQUESTS} requests failed:\n{gateway.log_tail()}")
    return (_cpu_seconds(gateway) - before) * 1000 / REQUESTS


def start_gateway_in(
    tree: Path, worker_url: str, run_dir: Path, env: dict[str, str]
) -> LocalProcess:
    """``python -m gateway`` from ``tree`` (its own gateway/ comes first on sys.path)."""
    port = free_port()
    full_env = {
        **os.environ,
        "GATEWAY_WORKER_URLS": worker_url,
        "GATEWAY_LOG_SPOOL_PATH": str(run_dir.resolve() / f"spool-{port}.jsonl"),
        "GATEWAY_LOG_DATABASE_URL": DATABASE_URL,
        **env,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"gateway-{port}.log"
    cmd = [str(GATEWAY_PYTHON), "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, cwd=tree, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    gateway = LocalProcess(f"gateway-{port}", process, port, log_path)
    wait_http_ok(gateway, "/readyz", 60)
    return gateway


def _trees() -> dict[str, Path]:
    spec = os.environ.get("BENCH_TREES", "")
    if not spec:
        return {"": REPO_ROOT}
    return {name: Path(path) for name, path in (part.split("=", 1) for part in spec.split(","))}


def main() -> None:
    from loadtest.bench.anchors import create_bench_key  # a database of its own

    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-gateway-cpu"
    chosen = [n.strip() for n in os.environ.get("BENCH_VARIANTS", "").split(";") if n.strip()]
    variants = {name: VARIANTS[name] for name in chosen} if chosen else VARIANTS
    trees = _trees()
    jpeg = photo(7, "listing", "bag")
    size = len(Payloads(jpeg, unique=False).next())
    key = create_bench_key() if any(v.key for v in variants.values()) else None
    print(f"machine: {machine_description()}")
    print(
        f"gateway CPU per request: {REQUESTS} chat requests (640x480 JPEG, {size:,} "
        f"bytes), {CONCURRENCY} at a time, echo worker; median of {ROUNDS} rounds"
    )
    worker = echo_worker.start(run_dir, stream_words=STREAM_WORDS)
    results: dict[str, list[float]] = {}
    try:
        for round_index in range(ROUNDS):
            order = list(trees.items())
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for name, variant in variants.items():
                for tree_name, tree in order:
                    env = {
                        **variant.env,
                        "GATEWAY_CACHE_NAMESPACE": f"cpu{os.getpid()}{round_index}",
                    }
                    gateway = start_gateway_in(tree, worker.url, run_dir, env)
                    try:
                        payloads = Payloads(
                            jpeg, variant.new_photos and not variant.hit, variant.stream
                        )
                        figure = _measure(gateway, payloads, key if variant.key else None)
                    finally:
                        gateway.stop()
                    label = f"{name} [{tree_name}]" if tree_name else name
                    results.setdefault(label, []).append(figure)
                    print(
                        f"  round {round_index + 1}/{ROUNDS} {label:<36} {figure:.3f} ms",
                        flush=True,
                    )
    finally:
        worker.stop()
    print(f"{'variant':<36} {'CPU ms/request':>15} {'(min-max)':>14} {'vs miss':>8}")
    for label, values in results.items():
        median = statistics.median(values)
        # Each variant against the plain miss of its own tree ("miss [after]" in an A/B).
        suffix = label[label.index(" [") :] if label.endswith("]") else ""
        base = results.get(f"miss{suffix}")
        delta = (
            ""
            if base is None or label == f"miss{suffix}"
            else f"{median - statistics.median(base):+.2f}"
        )
        spread = f"({min(values):.3f}-{max(values):.3f})"
        print(f"{label:<36} {median:>15.3f} {spread:>14} {delta:>8}")


if __name__ == "__main__":
    main()
