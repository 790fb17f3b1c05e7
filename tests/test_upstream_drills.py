"""Failure drills with real processes and real signals: two real cpu-tiny vLLM workers
(the session's and one of this module's) behind gateway processes.

Order matters inside this module: the drills that keep the second worker alive run first,
the SIGKILL drill last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstack.processes import (
    LocalProcess,
    StartError,
    identities,
    process_tree,
    signal_tree,
    start_gateway,
    start_worker,
)
from tests.support.metrics import scrape, total
from tests.support.requests import chat_body
from tests.support.worker import LOG_DIR, WORKER_STARTUP_TIMEOUT_S

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"
# Short health windows so the drills run in seconds; the cache is off so that every
# request reaches a worker.
DRILL_ENV = {
    "GATEWAY_CACHE_ENABLED": "false",
    "GATEWAY_HEALTH_INTERVAL_S": "0.5",
    "GATEWAY_HEALTH_TIMEOUT_S": "0.5",
}


def _body(stream: bool = False, tokens: int = 24) -> dict[str, Any]:
    return chat_body(
        "Describe a leather bag.",
        max_tokens=tokens,
        min_tokens=tokens,
        ignore_eos=True,
        stream=stream,
    )


@pytest.fixture(scope="module")
def second_worker() -> Iterator[LocalProcess]:
    try:
        worker = start_worker(LOG_DIR, timeout_s=WORKER_STARTUP_TIMEOUT_S)
    except StartError as exc:
        pytest.fail(str(exc))
    try:
        yield worker
    finally:
        signal_tree(worker, signal.SIGCONT)
        worker.stop()


@pytest.fixture
def gateway_env(gateway_process_env: dict[str, str]) -> dict[str, str]:
    return {**gateway_process_env, **DRILL_ENV}


async def _one(
    client: httpx.AsyncClient, url: str, stream: bool, tokens: int = 24
) -> tuple[int, bool, float]:
    """(status, complete answer, seconds)."""
    started = time.perf_counter()
    if not stream:
        response = await client.post(url + CHAT, json=_body(tokens=tokens))
        ok = response.status_code == 200 and bool(response.json()["choices"])
        return response.status_code, ok, time.perf_counter() - started
    async with client.stream("POST", url + CHAT, json=_body(True, tokens)) as response:
        text = (await response.aread()).decode()
    complete = response.status_code == 200 and text.rstrip().endswith("data: [DONE]")
    complete = complete and '"error"' not in text
    return response.status_code, complete, time.perf_counter() - started


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def test_gateway_sigterm_under_load_fails_no_in_flight_request(
    worker_url: str, second_worker: LocalProcess, gateway_env: dict[str, str]
) -> None:
    gateway = start_gateway(
        [worker_url, second_worker.url],
        LOG_DIR,
        env=gateway_env,
        args=["--graceful-timeout", "30", "--drain-delay", "0.5"],
    )
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [
                asyncio.create_task(_one(client, gateway.url, i % 2 == 0, tokens=1500))
                for i in range(8)
            ]
            await asyncio.sleep(0.3)
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            ready = await client.get(gateway.url + "/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "draining"
            assert ready.headers["retry-after"] == "1"
            results = await asyncio.gather(*tasks)
        assert [r[:2] for r in results] == [(200, True)] * 8
        # They were in flight when the signal came (sent 0.3 s after they started).
        assert sum(1 for r in results if r[2] > 0.5) >= 4, results
        assert await asyncio.to_thread(gateway.process.wait, 40) == 0
        assert "Traceback" not in gateway.log_tail(20000)
    finally:
        gateway.stop()


async def test_worker_sigstop_is_ejected_within_the_window(
    worker_url: str, second_worker: LocalProcess, gateway_env: dict[str, str]
) -> None:
    gateway = start_gateway([worker_url, second_worker.url], LOG_DIR, env=gateway_env)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            signal_tree(second_worker, signal.SIGSTOP)
            stopped = time.monotonic()
            label = f'worker="{second_worker.url}"'
            while True:
                samples = await scrape(client, gateway.url)
                if total(samples, "gateway_worker_healthy", lambda k: label in k) == 0:
                    break
                # health interval + health timeout, plus slack for a busy 2-core machine
                assert time.monotonic() - stopped < 3.0
                await asyncio.sleep(0.05)
            ejected_after = time.monotonic() - stopped
            results = [await _one(client, gateway.url, stream=i % 2 == 0) for i in range(10)]
            assert all(ok for _, ok, _ in results)
            p99 = _p99([s for _, _, s in results])
            assert p99 < 10.0
            print(f"SIGSTOP: ejected after {ejected_after:.2f} s; p99 {p99:.2f} s")
            signal_tree(second_worker, signal.SIGCONT)
            deadline = time.monotonic() + 15
            while (await client.get(gateway.url + "/readyz")).json().get("healthy_workers") != 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    finally:
        signal_tree(second_worker, signal.SIGCONT)
        gateway.stop()


async def test_worker_sigkill_under_load_costs_no_unstarted_request(
    worker_url: str, second_worker: LocalProcess, gateway_env: dict[str, str]
) -> None:
    gateway = start_gateway([worker_url, second_worker.url], LOG_DIR, env=gateway_env)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            results: list[tuple[int, bool, float, bool]] = []
            stop = time.monotonic() + 6.0

            async def loop(stream: bool) -> None:
                while time.monotonic() < stop:
                    status, ok, seconds = await _one(client, gateway.url, stream)
                    results.append((status, ok, seconds, stream))

            clients = [asyncio.create_task(loop(stream=i % 2 == 0)) for i in range(6)]
            await asyncio.sleep(1.5)
            # The API server alone, as a crash takes it: its engine core and that core's
            # worker (2 GB) must end with it, not live on as orphans (issue 25).
            launcher = second_worker.process.pid
            engine = identities(process_tree(launcher)[1:])
            (server,) = [pid for pid in engine if _parent(pid) == launcher]
            os.kill(server, signal.SIGKILL)
            await asyncio.gather(*clients)
        await _all_end(engine)
        # Every non-streamed request, and every stream that had not started, succeeded:
        # only a stream cut after its first byte may end in an error event (status 200).
        assert [r for r in results if r[0] != 200] == []
        assert all(ok for _, ok, _, stream in results if not stream)
        broken_streams = sum(1 for _, ok, _, stream in results if stream and not ok)
        assert broken_streams <= 3  # at most the streams in flight on the killed worker
        print(
            f"SIGKILL: {len(results)} requests, {broken_streams} streams cut mid-answer, "
            f"p99 {_p99([r[2] for r in results]):.2f} s"
        )
    finally:
        gateway.stop()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def _all_end(processes: dict[int, str], timeout_s: float = 60.0) -> None:
    """Each of ``processes`` (``identities``) ends within ``timeout_s``."""
    for _ in range(int(timeout_s / 0.2)):
        left = identities(list(processes))
        if not any(processes[pid] == when for pid, when in left.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"still running: {sorted(left)}")
