"""Coalescing drills with real processes (issue 15): two gateway replicas, a private Redis,
a worker double whose generations take ``generation_s`` (localstack/slow_worker.py).

* ``kill_the_leader``: a request leads on replica A; identical requests wait on replica
  B; A is SIGKILLed mid-generation. The waiters elect a new leader when A's lease lapses:
  answered within the lease plus one generation, with one extra worker request.
* ``the_leader_hangs_up``: a request leads on replica A (streamed or not), identical
  requests wait on A and B, and the leader's client disconnects mid-generation. The
  leader generates on: the waiters get its answer, at no extra worker request.

tests/test_hardening_drills.py asserts on the figures; loadtest/bench/hardening.py prints
them for ``make bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from localstack import slow_worker
from localstack.echo_worker import MODEL
from localstack.processes import NO_AUTH, LocalProcess, free_port, signal_tree, start_gateway

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class DrillResult:
    waiters: int
    answered: int  # waiters answered 200
    extra_worker_requests: int  # beyond the leader's one
    seconds_to_last_answer: float  # from the kill (or the hang-up) to the last waiter's answer
    lease_s: float
    generation_s: float


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A throwaway redis-server on a port of its own; its URL."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        while (
            b"PONG"
            not in subprocess.run(
                [cli, "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.asynccontextmanager
async def stack(
    run_dir: Path, lease_s: float, generation_s: float
) -> AsyncIterator[tuple[LocalProcess, LocalProcess, LocalProcess]]:
    """(worker, replica A, replica B), sharing a private Redis; stopped afterwards."""
    with private_redis(run_dir / f"redis-{uuid.uuid4().hex[:6]}") as redis_url:
        worker = await asyncio.to_thread(slow_worker.start, run_dir, generation_s)
        env = {
            **NO_AUTH,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_CACHE_NAMESPACE": f"drill{uuid.uuid4().hex[:8]}",
            "GATEWAY_COALESCE_LEASE_S": str(lease_s),
            "GATEWAY_LOG_ENABLED": "false",
            "GATEWAY_HEALTH_INTERVAL_S": "0.5",
        }
        replicas: list[LocalProcess] = []
        try:
            for _ in range(2):
                replicas.append(
                    await asyncio.to_thread(start_gateway, [worker.url], run_dir, env=env)
                )
            yield worker, replicas[0], replicas[1]
        finally:
            for process in (*replicas, worker):
                process.stop()


def _body(tag: str, stream: bool = False) -> dict[str, Any]:
    question = f"Is this bag real leather? ({tag})"
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 8,
        "stream": stream,  # not part of the cache key: streams and JSON coalesce together
    }


async def _asked(client: httpx.AsyncClient, worker: LocalProcess) -> int:
    response = await client.get(f"{worker.url}/count")
    return int(response.json()["chat_requests"])


async def _until_asked(client: httpx.AsyncClient, worker: LocalProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while await _asked(client, worker) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the leader's request never reached the worker")
        await asyncio.sleep(0.02)


async def _waiters(
    client: httpx.AsyncClient, urls: list[str], body: dict[str, Any], count: int
) -> list[asyncio.Task[httpx.Response]]:
    tasks = [
        asyncio.create_task(client.post(urls[i % len(urls)] + CHAT, json=body))
        for i in range(count)
    ]
    await asyncio.sleep(0.5)  # they look the key up and wait on the leader
    return tasks


async def _answered(tasks: list[asyncio.Task[httpx.Response]], started: float) -> tuple[int, float]:
    ok, last = 0, 0.0
    for finished in asyncio.as_completed(tasks):
        try:
            response = await finished
        except httpx.HTTPError:
            continue
        last = time.monotonic() - started
        ok += response.status_code == 200
    return ok, last


async def kill_the_leader(
    run_dir: Path, lease_s: float = 2.0, generation_s: float = 3.0, waiters: int = 8
) -> DrillResult:
    async with (
        stack(run_dir, lease_s, generation_s) as (worker, first, second),
        httpx.AsyncClient(timeout=120) as client,
    ):
        body = _body(uuid.uuid4().hex)
        before = await _asked(client, worker)
        leader = asyncio.create_task(client.post(first.url + CHAT, json=body))
        await _until_asked(client, worker, before + 1)
        tasks = await _waiters(client, [second.url], body, waiters)
        signal_tree(first, signal.SIGKILL)
        killed = time.monotonic()
        ok, last = await _answered(tasks, killed)
        with contextlib.suppress(httpx.HTTPError):
            await leader
        await asyncio.sleep(0.2)
        extra = await _asked(client, worker) - before - 1
    return DrillResult(waiters, ok, extra, last, lease_s, generation_s)


async def the_leader_hangs_up(
    run_dir: Path,
    lease_s: float = 2.0,
    generation_s: float = 3.0,
    waiters: int = 8,
    stream: bool = False,
) -> DrillResult:
    """``stream``: the leader's request streams (its client leaves after the first chunks)."""
    async with (
        stack(run_dir, lease_s, generation_s) as (worker, first, second),
        httpx.AsyncClient(timeout=120) as client,
    ):
        tag = uuid.uuid4().hex
        body = _body(tag)
        before = await _asked(client, worker)
        leader = asyncio.create_task(client.post(first.url + CHAT, json=_body(tag, stream)))
        await _until_asked(client, worker, before + 1)
        tasks = await _waiters(client, [first.url, second.url], body, waiters)
        leader.cancel()  # the leader's client hangs up mid-generation
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        hung_up = time.monotonic()
        ok, last = await _answered(tasks, hung_up)
        await asyncio.sleep(0.2)
        extra = await _asked(client, worker) - before - 1
    return DrillResult(waiters, ok, extra, last, lease_s, generation_s)
