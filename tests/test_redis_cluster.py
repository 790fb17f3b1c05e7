"""What only a Redis Cluster can break (issue 25).

The cache, coalescing and rate-limit tests run on this session's three-master cluster as
well as on the machine's Redis (their ``redis_target`` fixture). Here: coalescing's
pub/sub between nodes and after its node dies, outages that must fail open like a
standalone Redis's, and a cluster setting that contradicts the server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.answers import CachedAnswer
from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.cache.coalesce import Joined, Lead, Outcome
from gateway.cache.store import CacheUnavailable
from gateway.ratelimit import ConcurrencyLimiter, LimiterUnavailable, WindowLimiter
from gateway.ratelimit.settings import RateLimitSettings
from gateway.redis_link import RedisModeMismatch, check_cluster_setting
from tests.support.coalescing import Replica
from tests.support.redis_cluster import SHARED_REDIS, PrivateCluster
from tests.support.servers import gateway_settings

ANSWER = CachedAnswer("It is leather.", "stop", 300, 4)
NOWHERE = "http://127.0.0.1:9"  # no worker: these gateways never forward a request


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def drill_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """A cluster of the test's own, to break: its nodes left serve their own slots."""
    cluster = PrivateCluster(tmp_path / "cluster", full_coverage=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def until(check: Callable[[], Awaitable[bool] | bool], within_s: float = 30.0) -> None:
    """Poll with a generous bound: these are facts that become true, not timings."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def listening(cluster: PrivateCluster, namespace: str) -> Replica:
    """A replica whose waiters look at Redis only every 30 s: within a test, an answer
    reaches them through their subscription or not at all."""
    return Replica(
        cluster.target, namespace, lease_s=120.0, wait_timeout_s=60.0, poll_interval_s=30.0
    )


async def publish_only(leader: Replica, waiter: Replica, key: str) -> Outcome:
    """The leader shares an answer it does not store: only its message can answer the
    waiter (the lease is released with it, so a waiter that missed it would lead)."""
    lead = await leader.coalescer.acquire(key)
    assert isinstance(lead, Lead)
    waiting = asyncio.create_task(waiter.coalescer.acquire(key))
    await until(lambda: key in waiter.coalescer._waiters)
    await leader.coalescer.finish(lead, ANSWER, store_ttl_s=None)
    return await asyncio.wait_for(waiting, 20)


async def test_an_answer_published_on_any_node_reaches_waiters_on_another(
    redis_cluster: PrivateCluster, namespace: str
) -> None:
    # A key on each node: the waiters' one subscription (on one node) hears the other two.
    keys = redis_cluster.key_on_each_node(f"{namespace}:v1:answer:")
    async with (
        listening(redis_cluster, namespace) as leader,
        listening(redis_cluster, namespace) as waiter,
    ):
        for key in keys.values():
            assert await publish_only(leader, waiter, key) == Joined(ANSWER)
            assert await waiter.cache.get(key) is None  # shared, never stored


async def test_the_subscription_moves_to_a_live_node_when_its_node_dies(
    drill_cluster: PrivateCluster, namespace: str
) -> None:
    keys = drill_cluster.key_on_each_node(f"{namespace}:v1:answer:")
    async with listening(drill_cluster, namespace) as waiter:
        # The only subscription so far: the waiter's.
        (dead,) = (port for port, n in drill_cluster.pattern_subscribers().items() if n)
        async with listening(drill_cluster, namespace) as leader:
            for replica in (leader, waiter):  # they know every node before one dies
                assert await replica.cache.get(keys[dead]) is None
            drill_cluster.kill(dead)
            await until(lambda: waiter.coalescer.listener_reconnects >= 1)
            await until(lambda: waiter.coalescer.listening)  # again, on a node left
            key = next(key for port, key in keys.items() if port != dead)
            assert await publish_only(leader, waiter, key) == Joined(ANSWER)


async def test_a_node_or_the_whole_cluster_down_fails_open(
    drill_cluster: PrivateCluster, namespace: str
) -> None:
    timeout = 0.5
    async with Replica(drill_cluster.target, namespace, socket_timeout_s=timeout) as replica:
        windows = WindowLimiter(replica.redis, namespace, replica.breaker)
        leases = ConcurrencyLimiter(replica.redis, namespace, replica.breaker, lease_ttl_s=30)
        key = f"{namespace}:v1:answer:{{photo}}"
        await replica.cache.put(key, ANSWER)
        assert (await leases.acquire("k1", 5))[0] is not None

        frozen = drill_cluster.node_of(key)
        drill_cluster.freeze(frozen)  # hung: no error, no answer
        try:
            for _ in range(2):  # the breaker opens after two failures in a row
                started = time.monotonic()
                with pytest.raises(CacheUnavailable):
                    await replica.cache.get(key)
                # One try more after the slot map is read again, not redis-py's eleven (with
                # a pause after each): a request that meets a hung node is not held long.
                assert time.monotonic() - started < 8 * timeout
            assert replica.breaker.state.name == "OPEN"
            await _leads_alone(replica, key)
        finally:
            drill_cluster.thaw(frozen)
        await until(lambda: _probe(replica, key))  # back after the breaker's window

        for port in drill_cluster.ports:  # no node answers: the client cannot even start
            drill_cluster.kill(port)
        for failing in (
            lambda: replica.cache.get(key),
            leases.renew,
            lambda: windows.hit("requests", "k1", 10),
        ):
            await asyncio.sleep(1.05)  # the breaker's window: the next call asks Redis
            with pytest.raises((CacheUnavailable, LimiterUnavailable)):
                await failing()
        await asyncio.sleep(1.05)
        await _leads_alone(replica, key)


async def _leads_alone(replica: Replica, key: str) -> None:
    """Redis unreachable: the request leads for this replica only (no lease, no store),
    so identical requests here still share its one generation."""
    outcome = await replica.coalescer.acquire(key)
    assert isinstance(outcome, Lead), outcome
    assert outcome.local_only, outcome
    await replica.coalescer.finish(outcome, None, None)


async def _probe(replica: Replica, key: str) -> bool:
    try:
        return await replica.cache.get(key) == ANSWER
    except CacheUnavailable:
        return False


async def test_a_cluster_setting_that_contradicts_the_server_stops_start_up(
    redis_cluster: PrivateCluster, log_database_url: str
) -> None:
    cluster = redis_cluster.target.url
    with pytest.raises(RedisModeMismatch, match="set GATEWAY_REDIS_CLUSTER=true"):
        await check_cluster_setting(cluster, False, "GATEWAY_REDIS_CLUSTER", 2.0)
    with pytest.raises(RedisModeMismatch, match="set GATEWAY_REDIS_CLUSTER=false"):
        await check_cluster_setting(SHARED_REDIS, True, "GATEWAY_REDIS_CLUSTER", 2.0)
    await check_cluster_setting(cluster, True, "GATEWAY_REDIS_CLUSTER", 2.0)
    # Nobody answers: nothing to contradict; the gateway starts and fails open.
    await check_cluster_setting("redis://127.0.0.1:9/0", True, "GATEWAY_REDIS_CLUSTER", 2.0)

    # Through the lifespan: the answer cache's Redis, then the limiter's.
    app = create_app(gateway_settings(NOWHERE, cache_enabled=True, redis_url=cluster))
    with pytest.raises(RedisModeMismatch, match="GATEWAY_REDIS_CLUSTER=false"):
        async with app.router.lifespan_context(app):
            pass
    auth = AuthSettings(database_url=SecretStr(log_database_url))
    app = create_app(gateway_settings(NOWHERE, auth=auth, redis_url=cluster))
    with pytest.raises(RedisModeMismatch, match="set GATEWAY_REDIS_CLUSTER=true"):
        async with app.router.lifespan_context(app):
            pass
    limits = RateLimitSettings(redis_url=cluster)
    app = create_app(gateway_settings(NOWHERE, auth=auth, ratelimit=limits))
    with pytest.raises(RedisModeMismatch, match="GATEWAY_RATELIMIT_REDIS_CLUSTER=false"):
        async with app.router.lifespan_context(app):
            pass
    limits = RateLimitSettings(redis_url=cluster, redis_cluster=True)
    app = create_app(gateway_settings(NOWHERE, auth=auth, ratelimit=limits))
    async with app.router.lifespan_context(app):
        pass
