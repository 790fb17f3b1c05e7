"""A Redis client with its circuit breaker, and the exceptions that mean "Redis could not
be used for this call".

One tuple of failures for every Redis user (cache, coalescing, rate limits, image
verdicts): each fails open on exactly these, through its breaker, and lets anything else
surface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.loop_lag import LagAwareDeadline, LoopLag, LoopStalled

REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)
# A call gives up after this many deadlines of wall time even when the event loop's own
# stalls explain the wait (uncounted by the breaker: gateway/loop_lag.py).
CAP_DEADLINES: Final = 8


class RedisLink(NamedTuple):
    """A client and the breaker every call through it goes through."""

    client: Redis
    breaker: CircuitBreaker


def redis_breaker(
    deadline_s: float,
    open_s: float,
    failures: int,
    lag: LoopLag | None,
    on_state_change: Callable[[BreakerState], None],
) -> CircuitBreaker:
    """The breaker of a Redis client on the request path: each call within ``deadline_s``
    of responsive time; ``failures`` consecutive errors or real timeouts open it."""
    deadline = LagAwareDeadline(deadline_s, lag, CAP_DEADLINES * deadline_s)
    return CircuitBreaker(
        open_s,
        failure_threshold=failures,
        on_state_change=on_state_change,
        deadline=deadline.run,
        excused=(LoopStalled,),
    )


def socket_timeout(deadline_s: float) -> float:
    """The client's own read timeout: a backstop past the breaker's wall-clock cap, for
    calls made outside the breaker (lease renewals)."""
    return CAP_DEADLINES * deadline_s * 1.5
