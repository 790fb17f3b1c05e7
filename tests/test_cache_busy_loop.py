"""Issue 24: a busy gateway never mistakes itself for a sick Redis.

The event loop of a replica is loaded on purpose (a callback that holds it for 150 ms,
as a burst of CPU work does), while the machine's Redis is healthy: the answer cache
must not time out, its breaker must stay closed, and no request may bypass the cache.
The frozen-Redis drills (tests/test_cache_coalesce.py, tests/test_cache_http.py) check
that a Redis that really stops answering is still given up on within their bounds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from gateway.answers import CachedAnswer
from gateway.cache.store import AnswerCache, open_redis
from gateway.config import Settings
from gateway.loop_lag import LoopLag
from gateway.metrics import Metrics
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

ANSWER = CachedAnswer("It is leather.", "stop", 300, 4)
STALL_S = 0.15  # longer than the 0.1 s socket timeout the gateway had before issue 24


def _stall() -> None:
    time.sleep(STALL_S)  # CPU-bound work holding the loop, as a burst of requests does


async def _lifespan_cache(stack: AsyncExitStack, namespace: str) -> tuple[AnswerCache, Metrics]:
    """The answer cache's client and breaker, built the way the lifespan builds them."""
    settings = Settings(cache_namespace=namespace)
    metrics = Metrics()
    lag = LoopLag()
    await lag.start()
    stack.push_async_callback(lag.stop)
    link = await open_redis(settings, metrics, stack, lag)
    assert link is not None
    cache = AnswerCache(link.client, link.breaker, settings.cache_ttl_s, 4096)
    return cache, metrics


@pytest.fixture
async def stalling_loop() -> AsyncIterator[None]:
    """Hold this event loop for STALL_S, then let it run for 10 ms, over and over."""

    async def stall_forever() -> None:
        while True:
            await asyncio.sleep(0.01)
            _stall()

    task = asyncio.create_task(stall_forever())
    yield
    task.cancel()


async def test_a_stalled_loop_is_not_a_redis_timeout(stalling_loop: None) -> None:
    """The mechanism the issue suspected: an answer that arrived while the loop was held
    was read after the socket timeout, counted as a Redis timeout and opened the breaker;
    every request then bypassed the cache for the breaker's window."""
    namespace = f"test-busy-{uuid.uuid4().hex[:8]}"
    key = f"{namespace}:v1:answer:{{hot}}"
    async with AsyncExitStack() as stack:
        cache, metrics = await _lifespan_cache(stack, namespace)
        await cache.put(key, ANSWER)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0  # five stalls
        reads = 0
        while loop.time() < deadline:
            # Reads back to back, four at a time: some are in flight when a stall begins.
            assert await asyncio.gather(*(cache.get(key) for _ in range(4))) == [ANSWER] * 4
            reads += 4
        assert metrics.cache_breaker_state._value.get() == 0  # closed throughout
        await cache.delete(key)
    assert reads >= 20


async def test_a_replica_with_a_loaded_loop_never_bypasses_a_healthy_redis(
    fake_worker: FakeWorker, stalling_loop: None
) -> None:
    """Repeated and new cacheable questions through an in-process gateway (its loop is the
    one being stalled) against the machine's Redis: every answer is a hit, a miss or
    coalesced, none a bypass."""
    namespace = f"test-busy-{uuid.uuid4().hex[:8]}"
    async with (
        run_gateway(fake_worker.url, cache_enabled=True, cache_namespace=namespace) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        outcomes: list[str] = []
        slots = asyncio.Semaphore(8)

        async def ask(question: str) -> None:
            async with slots:
                body = chat_body(question, max_tokens=4, temperature=0)
                response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            outcomes.append(response.headers["x-cache"])

        questions = [f"Is bag {i % 4} real leather? {i // 16}" for i in range(96)]
        await asyncio.gather(*(ask(q) for q in questions))
        metrics = (await client.get("/metrics")).text
    assert outcomes.count("bypass") == 0, outcomes
    assert set(outcomes) <= {"hit", "miss", "coalesced"}
    errors = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_cache_errors_total")
    )
    assert errors == 0
