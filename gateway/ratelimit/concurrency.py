"""Concurrent requests per key, in Redis, shared by every replica.

Each key has a sorted set of leases scored by their expiry (Redis' own clock, read in the
scripts). Acquiring drops expired leases, then adds one if fewer than the limit remain.
Every replica renews its own live leases every ``lease_ttl_s / 3``, so a long stream keeps
its slot while a replica that crashed loses its slots when their leases run out instead of
leaking them forever. A lease is released when its response ends.

While Redis cannot be asked and the limiter fails open, ``acquire_locally`` counts slots in
this replica's memory instead, so a key holds at most its limit per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter, defaultdict
from typing import Final

from gateway.background import cancel_task
from gateway.breaker import CircuitBreaker
from gateway.ratelimit.scripts import ADMIT, WINDOW_MS, lease_set_key, window_keys
from gateway.ratelimit.windows import LimiterUnavailable, Window, guarded, window_from_reply
from gateway.redis_link import REDIS_FAILURES, RedisClient, Script

log = logging.getLogger("gateway.ratelimit")

# Returns the slots in use after acquiring, or -1 when the key has none free.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
"""
# One API key's lease set (KEYS[1]): its leases ARGV[2..] still there get a new expiry.
_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return renewed
"""


class ConcurrencyLimiter:
    def __init__(
        self, redis: RedisClient, namespace: str, breaker: CircuitBreaker, lease_ttl_s: float
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        self._ttl_ms = int(lease_ttl_s * 1000)
        self._leases: dict[str, str] = {}  # lease id -> its key's set
        self._local_leases: dict[str, str] = {}  # lease id -> key id, for local slots
        self._local_in_use: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._namespace = namespace
        self._admit = Script(redis, ADMIT)

    async def acquire(self, key_id: str, limit: int) -> tuple[str | None, int]:
        """(lease id, slots in use); the lease is None when the key has no free slot."""
        lease = secrets.token_hex(8)
        key = lease_set_key(self._namespace, key_id)

        async def run() -> int:
            return int(await self._redis.eval(_ACQUIRE, 1, key, limit, self._ttl_ms, lease))

        in_use = await guarded(self._breaker, run)
        if in_use < 0:
            return None, limit
        self._leases[lease] = key
        return lease, in_use

    async def admit(
        self, key_id: str, slots: int, requests_per_minute: int
    ) -> tuple[str | None, Window | None]:
        """A slot and one request unit in one round trip: (lease, requests window).

        (None, None): no free slot, and no request unit used; (None, window): refused for
        requests per minute, and no slot taken; (lease, window): admitted."""
        lease = secrets.token_hex(8)
        key = lease_set_key(self._namespace, key_id)
        keys = [key, *window_keys(self._namespace, "requests", key_id)]
        args: list[str | int] = [WINDOW_MS, requests_per_minute, slots, self._ttl_ms, lease]

        async def run() -> list[int]:
            return list(await self._admit(keys=keys, args=args))

        reply = await guarded(self._breaker, run)
        if int(reply[0]) < 0:
            return None, None
        window = window_from_reply("requests", requests_per_minute, reply)
        if not window.allowed:
            return None, window
        self._leases[lease] = key
        return lease, window

    def acquire_locally(self, key_id: str, limit: int) -> tuple[str | None, int]:
        """As ``acquire``, counting only this replica's requests (Redis unavailable)."""
        if self._local_in_use[key_id] >= limit:
            return None, limit
        lease = secrets.token_hex(8)
        self._local_leases[lease] = key_id
        self._local_in_use[key_id] += 1
        return lease, self._local_in_use[key_id]

    async def release(self, lease: str) -> None:
        if (key_id := self._local_leases.pop(lease, None)) is not None:
            self._local_in_use[key_id] -= 1
            if self._local_in_use[key_id] <= 0:
                del self._local_in_use[key_id]
            return
        key = self._leases.pop(lease, None)
        if key is None:
            return
        with contextlib.suppress(LimiterUnavailable):  # else the lease runs out by itself
            await guarded(self._breaker, lambda: self._redis.zrem(key, lease))

    async def renew(self) -> None:
        leases_of: defaultdict[str, list[str]] = defaultdict(list)
        for lease, key in self._leases.items():
            leases_of[key].append(lease)
        if not leases_of:
            return

        async def run() -> None:
            # A script per API key (its lease set is its own slot on a cluster), all in
            # one round trip per Redis node.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, leases in leases_of.items():
                    pipe.eval(_RENEW, 1, key, self._ttl_ms, *leases)
                await pipe.execute()

        await guarded(self._breaker, run)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._renew_loop(), name="ratelimit-lease-renewal")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                await self.renew()
            except (LimiterUnavailable, *REDIS_FAILURES):
                log.warning("concurrency lease renewal failed; leases may lapse")
