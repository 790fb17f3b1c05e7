"""One gateway replica's cache objects (own clients, breaker, cache and coalescer), built
the way the lifespan builds them, for tests of coalescing against a real Redis or a real
Redis Cluster."""

from __future__ import annotations

import asyncio

from gateway.cache.coalesce import Coalescer
from gateway.cache.store import AnswerCache
from gateway.loop_lag import LoopLag
from gateway.redis_link import redis_breaker, redis_client, socket_timeout
from tests.support.redis_cluster import RedisTarget

SHARED_REDIS = "redis://127.0.0.1:6379/0"  # the machine's Redis


class Replica:
    def __init__(
        self,
        where: str | RedisTarget,
        namespace: str,
        *,
        lease_s: float = 5.0,
        wait_timeout_s: float = 10.0,
        keepalive_s: float = 10.0,
        # Generous: a loaded test machine must not turn every test into a fail-open drill.
        socket_timeout_s: float = 1.0,
        poll_interval_s: float = 0.1,
        max_elections: int = 3,
    ) -> None:
        url, cluster = where if isinstance(where, RedisTarget) else (where, False)
        backstop = socket_timeout(socket_timeout_s)
        self.redis = redis_client(
            url, cluster, socket_timeout=backstop, socket_connect_timeout=backstop
        )
        self.pubsub = redis_client(url, cluster, socket_connect_timeout=0.5)
        self.lag = LoopLag()
        self.breaker = redis_breaker(
            socket_timeout_s, open_s=1.0, failures=2, lag=self.lag, on_state_change=lambda _: None
        )
        self.cache = AnswerCache(self.redis, self.breaker, ttl_seconds=60, max_value_bytes=4096)
        self.coalescer = Coalescer(
            self.redis, self.pubsub, self.breaker, self.cache, namespace,
            lease_s=lease_s, wait_timeout_s=wait_timeout_s, poll_interval_s=poll_interval_s,
            keepalive_s=keepalive_s, max_elections=max_elections,
        )  # fmt: skip

    async def __aenter__(self) -> Replica:
        await self.lag.start()
        await self.coalescer.start()
        deadline = asyncio.get_running_loop().time() + 30
        while not self.coalescer.listening:  # a message published before it would be missed
            if asyncio.get_running_loop().time() > deadline:
                await self.__aexit__()
                raise TimeoutError("the coalescer's subscription was not confirmed")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.coalescer.stop()
        await self.lag.stop()
        await self.redis.aclose()
        await self.pubsub.aclose()


async def forget_namespace(where: str | RedisTarget, namespace: str) -> None:
    """Delete a test's keys, through a client of its own: the replicas' short socket
    timeouts are for the drills, not for a scan of a busy shared Redis (or cluster)."""
    url, cluster = where if isinstance(where, RedisTarget) else (where, False)
    client = redis_client(url, cluster)
    try:
        keys = [k async for k in client.scan_iter(f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
