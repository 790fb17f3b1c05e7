"""One gateway replica's cache objects (own clients, breaker, cache and coalescer), built
the way the lifespan builds them, for tests of coalescing against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from gateway.breaker import CircuitBreaker
from gateway.cache.coalesce import Coalescer
from gateway.cache.store import AnswerCache

SHARED_REDIS = "redis://127.0.0.1:6379/0"


class Replica:
    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        lease_s: float = 5.0,
        wait_timeout_s: float = 10.0,
        keepalive_s: float = 10.0,
        socket_timeout_s: float = 0.2,
        max_elections: int = 3,
    ) -> None:
        self.redis = Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self.pubsub = Redis.from_url(url, socket_connect_timeout=0.5)
        self.breaker = CircuitBreaker(open_seconds=1.0)
        self.cache = AnswerCache(self.redis, self.breaker, ttl_seconds=60, max_value_bytes=4096)
        self.coalescer = Coalescer(
            self.redis, self.pubsub, self.breaker, self.cache, namespace,
            lease_s=lease_s, wait_timeout_s=wait_timeout_s, poll_interval_s=0.1,
            keepalive_s=keepalive_s, max_elections=max_elections,
        )  # fmt: skip

    async def __aenter__(self) -> Replica:
        await self.coalescer.start()
        await asyncio.sleep(0.05)  # let the pattern subscription settle
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.coalescer.stop()
        await self.redis.aclose()
        await self.pubsub.aclose()


async def forget_namespace(url: str, namespace: str) -> None:
    """Delete a test's keys, through a client of its own: the replicas' short socket
    timeouts are for the drills, not for a scan of a busy shared Redis."""
    client = Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
