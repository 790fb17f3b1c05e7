"""What the per-key limits cost a request: the Redis work of one admission, timed.

One admission is what the gateway does for a keyed request: the concurrency lease and one
request unit in one script (``ConcurrencyLimiter.admit``), tokens per minute in one
(``WindowLimiter.hit``), the lease's release: three Redis round trips (six before issue
16: the ``limits`` library's hit and window-stats scripts for each limit, and the lease).
Run against the machine's Redis: ``python -m loadtest.bench.ratelimit``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

from redis.asyncio import Redis

from gateway.breaker import CircuitBreaker
from gateway.ratelimit import ConcurrencyLimiter, WindowLimiter

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ADMISSIONS = int(os.environ.get("BENCH_ADMISSIONS", "2000"))


async def one_round(windows: WindowLimiter, leases: ConcurrencyLimiter) -> list[float]:
    key = uuid.uuid4().hex[:16]
    durations = []
    for _ in range(ADMISSIONS):
        start = time.perf_counter()
        lease, _ = await leases.admit(key, 10**6, 10**9)
        await windows.hit("tokens", key, 10**9, 1200)
        assert lease is not None
        await leases.release(lease)
        durations.append(time.perf_counter() - start)
    return durations


async def main() -> None:
    redis = Redis.from_url(REDIS_URL, socket_timeout=1.0)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(5.0)
    windows = WindowLimiter(redis, namespace, breaker)
    leases = ConcurrencyLimiter(redis, namespace, breaker, lease_ttl_s=30)
    try:
        for round_ in range(ROUNDS):
            durations = sorted(await one_round(windows, leases))
            p50 = statistics.median(durations) * 1000
            p99 = durations[int(len(durations) * 0.99)] * 1000
            print(
                f"round {round_ + 1}: {ADMISSIONS} admissions, one at a time: "
                f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, {ADMISSIONS / sum(durations):.0f}/s"
            )
    finally:
        keys = [k async for k in redis.scan_iter(f"{namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
