"""What the per-key limits cost a request: the Redis work of one admission, timed.

One admission is what the gateway does for a keyed request: the concurrency lease and one
request unit in one script (``ConcurrencyLimiter.admit``), tokens per minute in one
(``WindowLimiter.hit``), the lease's release: three Redis round trips (six before issue
16: the ``limits`` library's hit and window-stats scripts for each limit, and the lease).
Run against the machine's Redis: ``python -m loadtest.bench.ratelimit``. With
BENCH_REDIS_CLUSTER_URL (one node of a Redis Cluster) the rounds alternate between the
two, and the cluster's cost is printed as a ratio to the single server's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

from gateway.breaker import CircuitBreaker
from gateway.ratelimit import ConcurrencyLimiter, WindowLimiter
from gateway.redis_link import RedisClient, redis_client

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER_URL = os.environ.get("BENCH_REDIS_CLUSTER_URL")
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
    targets = {"redis": redis_client(REDIS_URL, False, socket_timeout=1.0)}
    if CLUSTER_URL:
        targets["cluster"] = redis_client(CLUSTER_URL, True, socket_timeout=1.0)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    medians: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for round_ in range(ROUNDS):
            for name, redis in targets.items():  # alternating: both see the same machine
                breaker = CircuitBreaker(5.0)
                windows = WindowLimiter(redis, namespace, breaker)
                leases = ConcurrencyLimiter(redis, namespace, breaker, lease_ttl_s=30)
                durations = sorted(await one_round(windows, leases))
                p50 = statistics.median(durations) * 1000
                p99 = durations[int(len(durations) * 0.99)] * 1000
                medians[name].append(p50)
                print(
                    f"round {round_ + 1} {name}: {ADMISSIONS} admissions, one at a time: "
                    f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, {ADMISSIONS / sum(durations):.0f}/s"
                )
        if "cluster" in medians:
            ratios = [c / r for c, r in zip(medians["cluster"], medians["redis"], strict=True)]
            print(
                f"cluster / single server, p50 per round: {', '.join(f'{r:.2f}' for r in ratios)}"
            )
    finally:
        for redis in targets.values():
            await _clean(redis, namespace)
            await redis.aclose()


async def _clean(redis: RedisClient, namespace: str) -> None:
    keys = [k async for k in redis.scan_iter(f"{namespace}:*")]
    if keys:
        await redis.delete(*keys)


if __name__ == "__main__":
    asyncio.run(main())
