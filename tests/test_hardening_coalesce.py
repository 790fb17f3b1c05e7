"""Issue 15, section 2: coalescing survives its leader (the coalescer against real Redis).

The drills with gateway processes (SIGKILL of the leader's replica, the leader's client
leaving) are in tests/test_hardening_drills.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.answers import CachedAnswer
from gateway.cache.coalesce import Joined, Lead, lock_key
from gateway.cache.keys import derive_key
from tests.doubles.fake_worker import FakeWorker
from tests.support.coalescing import SHARED_REDIS, Replica, forget_namespace
from tests.support.metrics import scrape, total
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import PrivateRedis
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

ANSWER = CachedAnswer("It is leather.", "stop", 300, 4)
# Renewed every third of it. Generous: on a loaded test machine (a load of 20 on 2 cores
# was seen) a 1 s lease lapsed between two renewals.
LEASE_S = 2.0


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replica(redis_target: RedisTarget, namespace: str) -> AsyncIterator[Replica]:
    async with Replica(
        redis_target, namespace, lease_s=LEASE_S, wait_timeout_s=30.0, socket_timeout_s=0.5
    ) as r:
        yield r
    await forget_namespace(redis_target, namespace)


async def test_a_leader_renews_its_lease_while_it_generates(
    replica: Replica, redis_target: RedisTarget, namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{slow}}"
    leader = await replica.coalescer.acquire(key)
    assert isinstance(leader, Lead)
    async with Replica(
        redis_target, namespace, lease_s=LEASE_S, wait_timeout_s=30.0, socket_timeout_s=0.5
    ) as other:
        waiter = asyncio.create_task(other.coalescer.acquire(key))
        await asyncio.sleep(2 * LEASE_S)  # without renewal the waiter would lead
        assert not waiter.done()
        assert await replica.redis.exists(lock_key(key))
        await replica.coalescer.finish(leader, ANSWER, store_ttl_s=60)
        assert await waiter == Joined(ANSWER)
    await forget_namespace(SHARED_REDIS, namespace)


async def test_a_refused_answer_is_shared_but_not_stored(
    replica: Replica, redis_target: RedisTarget, namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{refused}}"
    leader = await replica.coalescer.acquire(key)
    assert isinstance(leader, Lead)
    # Its waiters look at Redis every 30 s: only the leader's message can answer them.
    async with Replica(
        redis_target, namespace, lease_s=120.0, wait_timeout_s=60.0, poll_interval_s=30.0
    ) as other:
        waiters = [asyncio.create_task(other.coalescer.acquire(key)) for _ in range(3)]
        deadline = time.monotonic() + 30
        while len(other.coalescer._waiters.get(key, ())) < 3:  # all three listening
            assert time.monotonic() < deadline, [w.result() for w in waiters if w.done()]
            await asyncio.sleep(0.01)
        await replica.coalescer.finish(leader, ANSWER, store_ttl_s=None)
        assert await asyncio.gather(*waiters) == [Joined(ANSWER)] * 3
    assert await replica.cache.get(key) is None


def test_the_answer_and_its_lease_share_a_cluster_slot() -> None:
    key = derive_key("vlm", "m", "1|root", b"{}", [])
    assert key_slot(key.encode()) == key_slot(lock_key(key).encode())
    assert "{" in key  # a hash tag, not the whole key


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_a_silent_subscription_is_dropped_and_opened_again(
    private_redis: PrivateRedis,
) -> None:
    async with Replica(
        private_redis.url, "drill", wait_timeout_s=30.0, keepalive_s=0.3, socket_timeout_s=0.5
    ) as replica:
        private_redis.freeze()  # a half-open connection: no error, no answer
        try:
            for _ in range(200):  # up to 20 s; expected within 2 x keepalive + a poll
                if replica.coalescer.listener_reconnects:
                    break
                await asyncio.sleep(0.1)
        finally:
            private_redis.thaw()
        assert replica.coalescer.listener_reconnects >= 1


# --- a leader's lease is released whatever ends its request (issue 25) ------------------------

CHAT = "/v1/chat/completions"


async def _leases(url: str, namespace: str) -> list[bytes]:
    redis = Redis.from_url(url)
    try:
        return [key async for key in redis.scan_iter(f"{namespace}:*:lock")]
    finally:
        await redis.aclose()


async def test_a_malformed_worker_answer_releases_the_lead(
    fake_worker: FakeWorker, http: httpx.AsyncClient, namespace: str
) -> None:
    """``"tool_calls": 5`` raised after the worker answered, outside the guarded block: the
    lease was renewed for ever and every identical request waited 600 s."""
    prompt = f"malformed {uuid.uuid4().hex}"
    message = {"role": "assistant", "content": None, "tool_calls": 5}
    answer = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    fake_worker.scripts[prompt] = "fake:body:" + json.dumps(answer)
    settings = {"cache_enabled": True, "cache_namespace": namespace, "redis_socket_timeout_s": 2}
    async with run_gateway(fake_worker.url, **settings) as url:
        for _ in range(2):  # the second is not kept waiting for the first's lease
            response = await http.post(url + CHAT, json=chat_body(prompt, temperature=0))
            assert await _leases(SHARED_REDIS, namespace) == []
            assert response.status_code == 502, response.text
            assert response.json()["error"]["code"] == "upstream_error"


def _bytes_waiting_in(port: int) -> int:
    """Bytes received by the server on ``port`` that it has not read (a frozen Redis)."""
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # established
            waiting += int(fields[4].split(":")[1], 16)
    return waiting


async def _until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s * 20)):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen within {timeout_s:g} s: {what}")


async def test_a_client_that_leaves_during_the_lookup_leaves_no_lease(
    private_redis: PrivateRedis, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    """The lookup's script (SET NX) is sent, the client leaves before its answer: the lease
    it took must be released, not left to lapse (60 s here) while waiters wait for it."""
    settings = {
        "redis_url": private_redis.url, "cache_enabled": True, "cache_namespace": "drill",
        "redis_socket_timeout_s": 60, "coalesce_lease_s": 60,
    }  # fmt: skip
    async with run_gateway(fake_worker.url, **settings) as url:
        # A first request opens the connection and loads the scripts: the next one sends
        # nothing but its lookup.
        assert (await http.post(url + CHAT, json=chat_body("warm", temperature=0))).is_success
        private_redis.freeze()
        try:
            body = chat_body(f"gone {uuid.uuid4().hex}", temperature=0)
            request = asyncio.create_task(http.post(url + CHAT, json=body))
            await _until(lambda: _bytes_waiting_in(private_redis.port), "the lookup sent")
            request.cancel()  # the client hangs up

            async def gone() -> bool:
                samples = await scrape(http, url)
                return total(samples, "gateway_client_disconnects_total") == 1

            await _until(gone, "the gateway saw the client leave")
        finally:
            private_redis.thaw()

        async def released() -> bool:
            return await _leases(private_redis.url, "drill") == []

        await _until(released, "the lease released", timeout_s=10)
