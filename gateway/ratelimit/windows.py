"""Requests and tokens per minute per key: sliding window counters in Redis.

The sliding window counter: two counters per key and limit (this minute's and the last
one's, weighted by how much of the last is still inside the window), charged by one Lua
script per hit that also returns the figures for the headers (scripts.py; the ``limits``
library's algorithm, in one round trip instead of two). Its memory and cost do not grow
with the amount charged, which matters for tokens: a moving window stores one list entry
per unit, thousands per image request. Redis' own TTLs keep the time, so replicas with
skewed clocks still agree.

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
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.ratelimit.scripts import CHARGE, WINDOW_MS, window_keys
from gateway.redis_link import REDIS_FAILURES, RedisClient, Script

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


def window_from_reply(kind: LimitKind, limit: int, reply: list[int]) -> Window:
    """A charge script's {allowed, previous, its ttl ms, current, its ttl ms} as a Window;
    remaining and reset as limits computes them (reset: when the next counted unit
    leaves the window)."""
    allowed, prev, prev_ttl_ms, cur, cur_ttl_ms = (int(v) for v in reply)
    remaining = max(0, limit - math.floor(prev * prev_ttl_ms / WINDOW_MS + cur))
    expiry = WINDOW_MS / 1000
    reset = math.inf
    if prev:
        reset = (prev_ttl_ms / 1000) % (expiry / prev)
    if cur:
        reset = min(reset, (cur_ttl_ms / 1000) % expiry)
    return Window(kind, bool(allowed), limit, remaining, 0.0 if math.isinf(reset) else reset)


class WindowLimiter:
    def __init__(self, redis: RedisClient, namespace: str, breaker: CircuitBreaker):
        self._charge = Script(redis, CHARGE)
        self._namespace = namespace
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._breaker = breaker

    async def hit(self, kind: LimitKind, key_id: str, limit: int, cost: int = 1) -> Window:
        """Charge ``cost`` against the key's per-minute ``limit`` (nothing when refused)."""
        keys = window_keys(self._namespace, kind, key_id)

        async def run() -> Window:
            reply = await self._charge(keys=keys, args=[WINDOW_MS, limit, cost])
            return window_from_reply(kind, limit, reply)

        return await guarded(self._breaker, run)

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
