"""The exceptions that mean "Redis could not be used for this call".

One tuple for every Redis user (cache, coalescing, rate limits, image verdicts): each
fails open on exactly these, through its circuit breaker, and lets anything else surface.
"""

from __future__ import annotations

from typing import Final

from redis.exceptions import RedisError

REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)
