"""Requests and tokens per minute per key, with the ``limits`` library on Redis.

The sliding window counter: two counters per key and limit (this minute's and the last
one's, weighted by how much of the last is still inside the window), updated by one Lua
script per hit. Its memory and cost do not grow with the amount charged, which matters for
tokens: a moving window stores one list entry per unit, thousands per image request.
Redis' own TTLs keep the time, so replicas with skewed clocks still agree.

While Redis cannot be asked and the limiter fails open, ``hit_locally`` applies the same
limits in this replica's memory: a key then gets at most its limit per replica, not none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.redis_link import REDIS_FAILURES

T = TypeVar("T")
LimitKind = Literal["requests", "tokens", "concurrent"]
# What counts as "Redis failed": the breaker opens on these.


class LimiterUnavailable(Exception):
    """Redis could not be asked (down, slow, or skipped by the open breaker)."""


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's state after a hit (or a look): what the x-ratelimit-* headers say."""

    kind: LimitKind
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until the window has room again


async def guarded(breaker: CircuitBreaker, operation: Callable[[], Awaitable[T]]) -> T:
    """Run a Redis operation through the breaker; any failure is LimiterUnavailable."""
    try:
        return await breaker.call(operation, REDIS_FAILURES)
    except (BreakerOpen, *REDIS_FAILURES):
        raise LimiterUnavailable from None


class WindowLimiter:
    def __init__(self, redis: Redis, redis_url: str, namespace: str, breaker: CircuitBreaker):
        storage = RedisStorage(
            "async+" + redis_url,
            implementation="redispy",
            key_prefix=f"{namespace}:ratelimit",
            # Our own client's pool: its timeouts apply, and the lifespan closes it.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._breaker = breaker

    async def hit(self, kind: LimitKind, key_id: str, limit: int, cost: int = 1) -> Window:
        """Charge ``cost`` against the key's per-minute ``limit`` (nothing when refused)."""
        return await guarded(
            self._breaker, lambda: _hit_and_look(self._limiter, kind, key_id, limit, cost)
        )

    async def hit_locally(self, kind: LimitKind, key_id: str, limit: int, cost: int = 1) -> Window:
        """The same charge against this replica's own counters (Redis unavailable)."""
        return await _hit_and_look(self._local, kind, key_id, limit, cost)


async def _hit_and_look(
    limiter: SlidingWindowCounterRateLimiter, kind: LimitKind, key_id: str, limit: int, cost: int
) -> Window:
    item = RateLimitItemPerMinute(limit, namespace=kind)
    allowed = await limiter.hit(item, key_id, cost=cost)
    stats = await limiter.get_window_stats(item, key_id)
    reset_s = max(0.0, stats.reset_time - time.time())
    return Window(kind, allowed, limit, stats.remaining, reset_s)


def retry_after_s(window: Window, cost: int) -> int:
    """Whole seconds to wait before asking again (at least 1, at most the window)."""
    if cost > window.limit:
        return 60  # never fits: any answer is honest only about the window's length
    return max(1, min(60, math.ceil(window.reset_s)))
