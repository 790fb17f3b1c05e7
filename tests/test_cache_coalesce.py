"""The coalescer and the cache against a real Redis server and a real Redis Cluster.

Normal behaviour runs twice (``redis_target``): on the machine's Redis and on this
session's three-master cluster, each with a namespace of its own. Keys carry a hash tag
as derive_key's do. Drills that kill or freeze Redis use a private instance
(tests/support/redis_server.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.answers import CachedAnswer
from gateway.cache.coalesce import (
    Alone,
    Joined,
    Lead,
    Stored,
    done_channel,
    lock_key,
)
from gateway.cache.store import CacheUnavailable
from tests.support.coalescing import SHARED_REDIS, Replica, forget_namespace
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import PrivateRedis

ANSWER = CachedAnswer("It is leather.", "stop", 300, 4)


# The shared Redis' round trips on a busy machine: these tests are about coalescing, not
# time-outs (the drills on a private Redis keep the replicas' short ones).
SHARED_TIMEOUT_S = 2.0


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(
    redis_target: RedisTarget, namespace: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    async with (
        Replica(redis_target, namespace) as a,
        Replica(redis_target, namespace) as b,
    ):
        yield a, b
    await forget_namespace(redis_target, namespace)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def _simulate_request(replica: Replica, key: str, generations: list[int]) -> str:
    """What the pipeline does: acquire; a leader 'generates', stores and finishes."""
    outcome = await replica.coalescer.acquire(key)
    if isinstance(outcome, Joined | Stored):
        assert outcome.answer == ANSWER
        return "coalesced" if isinstance(outcome, Joined) else "hit"
    await asyncio.sleep(0.3)  # the generation
    generations.append(1)
    if isinstance(outcome, Lead):
        await replica.coalescer.finish(outcome, ANSWER, store_ttl_s=60)
        return "leader"
    return "alone"


async def test_fifty_identical_requests_over_two_replicas_generate_once(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{abc}}"
    generations: list[int] = []
    outcomes = await asyncio.gather(
        *[_simulate_request(replicas[i % 2], key, generations) for i in range(50)]
    )
    assert len(generations) == 1
    assert outcomes.count("leader") == 1
    assert outcomes.count("coalesced") + outcomes.count("hit") == 49
    assert await replicas[0].cache.get(key) == ANSWER, "the leader stored its answer"


async def test_waiters_elect_one_new_leader_when_the_leader_fails(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{fails}}"
    leader = await replicas[0].coalescer.acquire(key)
    assert isinstance(leader, Lead)
    waiters = [asyncio.create_task(replicas[i % 2].coalescer.acquire(key)) for i in range(4)]
    await asyncio.sleep(0.2)
    await replicas[0].coalescer.finish(leader, None, store_ttl_s=60)
    await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    leads = [w.result() for w in waiters if w.done()]
    assert len(leads) == 1  # one waiter leads; the others wait for it
    assert isinstance(leads[0], Lead)
    owner = replicas[0] if leads[0].key in replicas[0].coalescer._local_leaders else replicas[1]
    await owner.coalescer.finish(leads[0], ANSWER, store_ttl_s=60)
    results = await asyncio.gather(*waiters)
    assert sum(isinstance(r, Joined) and r.answer == ANSWER for r in results) == 3


async def test_a_leader_that_dies_is_replaced_when_its_lease_lapses(
    redis_target: RedisTarget, namespace: str
) -> None:
    async with Replica(redis_target, namespace) as replica:
        key = f"{namespace}:v1:answer:{{dead}}"
        # A leader elsewhere took the lease and died: it never renews, publishes or releases.
        await replica.redis.set(f"{key}:lock", "dead-leader", px=300)
        started = asyncio.get_running_loop().time()
        result = await replica.coalescer.acquire(key)
        assert isinstance(result, Lead)  # elected: the next leader
        assert asyncio.get_running_loop().time() - started < 2.0
        await replica.coalescer.finish(result, None, store_ttl_s=None)


async def test_a_waiter_gives_up_after_its_wait_timeout(
    redis_target: RedisTarget, namespace: str
) -> None:
    async with Replica(redis_target, namespace, wait_timeout_s=0.5) as replica:
        key = f"{namespace}:v1:answer:{{slow}}"
        await replica.redis.set(f"{key}:lock", "slow-leader", px=10_000)
        result = await replica.coalescer.acquire(key)
        assert result == Alone("waited too long")
        await replica.redis.delete(f"{key}:lock")


async def test_a_local_waiter_gives_up_after_its_wait_timeout(namespace: str) -> None:
    async with Replica(
        SHARED_REDIS, namespace, wait_timeout_s=0.5, socket_timeout_s=SHARED_TIMEOUT_S
    ) as replica:
        key = f"{namespace}:v1:answer:local"
        leader = await replica.coalescer.acquire(key)
        assert isinstance(leader, Lead)
        async with asyncio.timeout(10):
            assert await replica.coalescer.acquire(key) == Alone("waited too long")
        await replica.coalescer.finish(leader, None, store_ttl_s=None)


async def test_a_waiter_stops_electing_after_max_elections_failed_leaders(
    namespace: str,
) -> None:
    """Each failed leader costs an election; after max_elections of them the waiter goes
    alone instead of waiting for ever. Here every failure notice comes while another
    leader still holds the lease, so the waiter never wins it and waits again."""
    async with Replica(
        SHARED_REDIS, namespace, wait_timeout_s=60.0, socket_timeout_s=SHARED_TIMEOUT_S,
        max_elections=2,
    ) as replica:  # fmt: skip
        key = f"{namespace}:v1:answer:failing"
        await replica.redis.set(lock_key(key), "another-leader", px=60_000)
        waiter = asyncio.create_task(replica.coalescer.acquire(key))
        for _ in range(2):
            await asyncio.sleep(0.5)  # waiting (again): a lookup and a subscription away
            await replica.redis.publish(done_channel(key), b"-")  # "failed, no answer"
        await asyncio.sleep(0.5)
        assert not waiter.done()  # two failed leaders: elected twice, waits on
        await replica.redis.publish(done_channel(key), b"-")
        async with asyncio.timeout(10):
            assert await waiter == Alone("leader failed")
        await replica.redis.delete(lock_key(key))


async def test_a_stored_answer_is_a_hit_in_the_same_round_trip(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{stored}}"
    await replicas[0].cache.put(key, ANSWER)
    assert await replicas[1].coalescer.acquire(key) == Stored(ANSWER)
    assert not await replicas[1].redis.exists(f"{key}:lock"), "a hit takes no lock"


async def test_an_answer_stored_without_a_message_is_found_by_a_waiter(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    """The waiter polls the cache too: a publish it missed does not leave it waiting."""
    key = f"{namespace}:v1:answer:{{late}}"
    # The lease outlives the test: the answer must be found by polling, not after it.
    await replicas[0].redis.set(f"{key}:lock", "someone", px=60_000)
    waiter = asyncio.create_task(replicas[1].coalescer.acquire(key))
    await asyncio.sleep(0.2)
    await replicas[0].cache.put(key, ANSWER)
    async with asyncio.timeout(10):  # polled every 0.1 s
        assert await waiter == Joined(ANSWER)


async def test_values_over_the_cap_are_not_stored(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    key = f"{namespace}:v1:answer:{{big}}"
    assert not await replicas[0].cache.put(key, CachedAnswer("x" * 5000, "stop", 1, 1))
    assert await replicas[0].cache.get(key) is None
    assert await replicas[0].cache.put(key, ANSWER)
    assert await replicas[0].redis.ttl(key) > 0


async def _leads_alone(replica: Replica, key: str) -> None:
    """Without Redis a request leads for its replica alone: a second identical one joins
    it in memory (issue 24), and nothing waits on Redis."""
    lead = await replica.coalescer.acquire(key)
    assert isinstance(lead, Lead)
    assert lead.local_only
    joiner = asyncio.create_task(replica.coalescer.acquire(key))
    await asyncio.sleep(0.05)
    await replica.coalescer.finish(lead, ANSWER, store_ttl_s=None)
    assert await joiner == Joined(ANSWER)


async def test_dead_redis_costs_one_timeout_per_breaker_window(
    private_redis: PrivateRedis,
) -> None:
    async with Replica(private_redis.url, "drill", socket_timeout_s=0.2) as replica:
        await replica.cache.put("drill:v1:answer:k", ANSWER)
        private_redis.freeze()  # hung: every call would wait for its socket timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        failures = 0
        for _ in range(50):
            with pytest.raises(CacheUnavailable):
                await replica.cache.get("drill:v1:answer:k")
            failures += 1
        elapsed = loop.time() - started
        assert failures == 50
        assert replica.breaker.state.name == "OPEN"
        assert elapsed < 0.6, f"50 calls took {elapsed:.2f}s: more than one timeout was paid"
        await _leads_alone(replica, "drill:v1:answer:k")
        private_redis.thaw()
        await asyncio.sleep(1.05)  # the breaker window
        assert await replica.cache.get("drill:v1:answer:k") == ANSWER
        assert replica.breaker.state.name == "CLOSED"


async def test_killed_redis_fails_open_and_recovers_after_restart(
    private_redis: PrivateRedis,
) -> None:
    async with Replica(private_redis.url, "drill") as replica:
        await replica.cache.put("drill:v1:answer:k", ANSWER)
        private_redis.kill()
        with pytest.raises(CacheUnavailable):
            await replica.cache.get("drill:v1:answer:k")
        await _leads_alone(replica, "drill:v1:answer:x")
        private_redis.start()  # same port: clients reconnect by themselves
        await asyncio.sleep(1.05)
        assert await replica.cache.get("drill:v1:answer:k") is None  # no persistence: empty
        assert await replica.cache.put("drill:v1:answer:k", ANSWER)
        assert await replica.cache.get("drill:v1:answer:k") == ANSWER
