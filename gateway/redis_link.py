"""A Redis client with its circuit breaker, and the exceptions that mean "Redis could not
be used for this call".

One tuple of failures for every Redis user (cache, coalescing, rate limits, image
verdicts): each fails open on exactly these, through its breaker, and lets anything else
surface.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.breaker import CircuitBreaker

REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)


class RedisLink(NamedTuple):
    """A client and the breaker every call through it goes through."""

    client: Redis
    breaker: CircuitBreaker
