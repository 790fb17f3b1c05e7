"""Issue 15, section 2: coalescing survives its leader (the coalescer against real Redis).

The drills with gateway processes (SIGKILL of the leader's replica, the leader's client
leaving) are in tests/test_hardening_drills.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.answers import CachedAnswer
from gateway.cache.coalesce import Joined, Lead, lock_key
from gateway.cache.keys import derive_key
from tests.support.coalescing import SHARED_REDIS, Replica, forget_namespace
from tests.support.redis_server import PrivateRedis

ANSWER = CachedAnswer("It is leather.", "stop", 300, 4)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replica(namespace: str) -> AsyncIterator[Replica]:
    async with Replica(
        SHARED_REDIS, namespace, lease_s=0.3, wait_timeout_s=30.0, socket_timeout_s=0.5
    ) as r:
        yield r
    await forget_namespace(SHARED_REDIS, namespace)


async def test_a_leader_renews_its_lease_while_it_generates(namespace: str) -> None:
    key = f"{namespace}:v1:answer:{{slow}}"
    # A lease of 1 s, renewed every third of it: only a stall of 0.6 s could lose it.
    settings: dict[str, Any] = {"lease_s": 1.0, "wait_timeout_s": 30.0, "socket_timeout_s": 0.5}
    async with (
        Replica(SHARED_REDIS, namespace, **settings) as replica,
        Replica(SHARED_REDIS, namespace, **settings) as other,
    ):
        leader = await replica.coalescer.acquire(key)
        assert isinstance(leader, Lead)
        waiter = asyncio.create_task(other.coalescer.acquire(key))
        await asyncio.sleep(3.0)  # three leases: without renewal the waiter would lead
        assert not waiter.done()
        assert await replica.redis.exists(lock_key(key))
        await replica.coalescer.finish(leader, ANSWER, store_ttl_s=60)
        assert await waiter == Joined(ANSWER)
    await forget_namespace(SHARED_REDIS, namespace)


async def test_a_refused_answer_is_shared_but_not_stored(replica: Replica, namespace: str) -> None:
    key = f"{namespace}:v1:answer:{{refused}}"
    leader = await replica.coalescer.acquire(key)
    assert isinstance(leader, Lead)
    async with Replica(
        SHARED_REDIS, namespace, lease_s=0.3, wait_timeout_s=30.0, socket_timeout_s=0.5
    ) as other:
        waiters = [asyncio.create_task(other.coalescer.acquire(key)) for _ in range(3)]
        await asyncio.sleep(1.0)  # three lookups of a local Redis: they wait by now
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
