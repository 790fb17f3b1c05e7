"""Issue 15, section 2: coalescing survives its leader (the coalescer against real Redis).

The drills with gateway processes (SIGKILL of the leader's replica, the leader's client
leaving) are in tests/test_hardening_drills.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.answers import CachedAnswer
from gateway.cache.coalesce import Joined, Lead, lock_key
from gateway.cache.keys import derive_key
from tests.support.coalescing import Replica
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import PrivateRedis

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
        keys = [k async for k in r.redis.scan_iter(f"{namespace}:*")]
        if keys:
            await r.redis.delete(*keys)


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
