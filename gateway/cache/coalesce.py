"""Identical in-flight requests share one generation, across every gateway replica.

The first request for a key takes a Redis lock (SET NX PX) and becomes the
leader; it calls a worker, stores the answer, then publishes it on the key's
channel and releases the lock. Requests for the same key that arrive meanwhile,
on any replica, wait: for the published answer, for the stored answer (checked
in case the leader finished before they listened), or for the lock to vanish
(the leader failed or died), whichever comes first. A waiter whose leader fails,
or who waits past `wait_timeout_s`, calls a worker itself.

Inside one replica, a second identical request joins the local leader's future
directly, without a Redis round trip.

Streaming waiters get the finished answer replayed as SSE once the leader is
done, rather than a live fan-out of the leader's chunks: replaying is exact
(the same chunks a cache hit gets), survives a leader on another replica, and
needs no per-token pub/sub traffic. The cost is that a waiter's first token
arrives when the leader's last one does.

Each replica keeps one pattern subscription for all keys (not one connection
per waiter), owned by the lifespan through start() and stop().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Final

from redis.asyncio import Redis

from gateway.answers import CachedAnswer
from gateway.background import cancel_task
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.cache.store import AnswerCache, CacheUnavailable
from gateway.redis_link import REDIS_FAILURES

logger = logging.getLogger(__name__)

# One round trip for the lookup: the stored answer, else try to become the leader.
# KEYS: answer, lock. ARGV: token, lock ttl (ms). Returns {1, answer} | {2} lead | {3} wait.
_LOOKUP_SCRIPT: Final = """
local answer = redis.call('get', KEYS[1])
if answer then return {1, answer} end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"""
# One round trip for the leader's end: store (ttl > 0), publish, release the lock if it
# is still ours (after an expiry another leader may hold it).
# KEYS: answer, lock. ARGV: value, ttl (s, 0: do not store), channel, payload, token.
_FINISH_SCRIPT: Final = """
if ARGV[2] ~= '0' then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('publish', ARGV[3], ARGV[4])
if redis.call('get', KEYS[2]) == ARGV[5] then redis.call('del', KEYS[2]) end
return 1
"""
_FAILED: Final = b"-"  # published when the leader has no answer to share
REDIS_UNAVAILABLE: Final = "redis unavailable"


def lock_key(key: str) -> str:
    return f"{key}:lock"


def done_channel(key: str) -> str:
    return f"{key}:done"


@dataclass(frozen=True, slots=True)
class Stored:
    """The answer was already in the cache: a hit."""

    answer: CachedAnswer


@dataclass(frozen=True, slots=True)
class Joined:
    """Another request's answer, shared with this one."""

    answer: CachedAnswer


@dataclass(slots=True)
class Lead:
    """This request computes the answer; it must call Coalescer.finish exactly once."""

    key: str
    token: str
    local: asyncio.Future[CachedAnswer | None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Alone:
    """No coalescing for this request (Redis unavailable, leader failed, waited too long)."""

    reason: str


Outcome = Stored | Joined | Lead | Alone


class Coalescer:
    def __init__(
        self,
        redis: Redis,
        pubsub_redis: Redis,
        breaker: CircuitBreaker,
        cache: AnswerCache,
        namespace: str,
        lock_ttl_s: float,
        wait_timeout_s: float,
        poll_interval_s: float = 0.5,
    ) -> None:
        self._redis = redis
        self._pubsub_redis = pubsub_redis
        self._breaker = breaker
        self._cache = cache
        self._pattern = f"{namespace}:*:done"
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._wait_timeout_s = wait_timeout_s
        self._poll_interval_s = poll_interval_s
        self._local_leaders: dict[str, asyncio.Future[CachedAnswer | None]] = {}
        self._waiters: dict[str, set[asyncio.Future[bytes]]] = {}
        self._listener: asyncio.Task[None] | None = None

    # -- lifespan -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever(), name="coalesce-listener")

    async def stop(self) -> None:
        await cancel_task(self._listener)
        for future in self._local_leaders.values():
            if not future.done():
                future.set_result(None)

    async def _listen_forever(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with self._pubsub_redis.pubsub() as pubsub:
                    await pubsub.psubscribe(self._pattern)
                    backoff = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") == "pmessage":
                            self._deliver(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone: waiters fall back to polling meanwhile
                logger.warning("coalescing listener lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        key = name.removesuffix(":done")
        payload = data.encode() if isinstance(data, str) else data
        for future in self._waiters.get(key, ()):
            if not future.done():
                future.set_result(payload)

    # -- per request --------------------------------------------------------------------------

    async def acquire(self, key: str) -> Outcome:
        """The stored answer, or lead the computation of key's answer, or wait for the
        one in flight."""
        local = self._local_leaders.get(key)
        if local is not None:
            return await self._join_local(local)
        token = secrets.token_hex(8)
        try:
            found = await self._breaker.call(
                lambda: self._redis.eval(
                    _LOOKUP_SCRIPT, 2, key, lock_key(key), token, self._lock_ttl_ms
                ),
                REDIS_FAILURES,
            )
        except (BreakerOpen, *REDIS_FAILURES):
            return Alone(REDIS_UNAVAILABLE)
        if found[0] == 1:
            stored = CachedAnswer.decode(found[1])
            return Stored(stored) if stored is not None else Alone("unreadable answer")
        # Another request of this replica may have become leader while we awaited Redis.
        local = self._local_leaders.get(key)
        if found[0] == 2:
            if local is not None:  # impossible while we hold the lock; be safe anyway
                await self._finish_remote(key, token, None, None)
                return await self._join_local(local)
            future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
            self._local_leaders[key] = future
            return Lead(key, token, future)
        if local is not None:
            return await self._join_local(local)
        return await self._wait_remote(key)

    async def finish(
        self, lead: Lead, answer: CachedAnswer | None, store_ttl_s: int | None
    ) -> None:
        """Store the leader's answer (when store_ttl_s is given), share it (None: it has
        none) and release the lock, in one round trip: stored before published, so a
        waiter that looks in the cache instead of listening finds it."""
        self._local_leaders.pop(lead.key, None)
        if not lead.local.done():
            lead.local.set_result(answer)
        await self._finish_remote(lead.key, lead.token, answer, store_ttl_s)

    async def _finish_remote(
        self, key: str, token: str, answer: CachedAnswer | None, store_ttl_s: int | None
    ) -> None:
        payload = answer.encode() if answer is not None else _FAILED
        ttl = store_ttl_s if answer is not None and store_ttl_s else 0
        keys = (key, lock_key(key))
        args = (payload if ttl else b"", ttl, done_channel(key), payload, token)
        with contextlib.suppress(BreakerOpen, *REDIS_FAILURES):
            await self._breaker.call(
                lambda: self._redis.eval(_FINISH_SCRIPT, len(keys), *keys, *args),
                REDIS_FAILURES,
            )

    async def _join_local(self, future: asyncio.Future[CachedAnswer | None]) -> Outcome:
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), self._wait_timeout_s)
        except TimeoutError:
            return Alone("waited too long")
        return Joined(answer) if answer is not None else Alone("leader failed")

    async def _wait_remote(self, key: str) -> Outcome:
        published: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(published)
        deadline = time.monotonic() + self._wait_timeout_s
        try:
            while True:
                # The leader may have finished before we listened: look in the cache.
                try:
                    stored = await self._cache.get(key)
                except CacheUnavailable:
                    return Alone(REDIS_UNAVAILABLE)
                if stored is not None:
                    return Joined(stored)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Alone("waited too long")
                done, _ = await asyncio.wait(
                    {published}, timeout=min(self._poll_interval_s, remaining)
                )
                if done:
                    answer = CachedAnswer.decode(published.result())
                    return Joined(answer) if answer is not None else Alone("leader failed")
                if not await self._lock_held(key):
                    # Gone without publishing to us: one last look in the cache.
                    try:
                        stored = await self._cache.get(key)
                    except CacheUnavailable:
                        return Alone(REDIS_UNAVAILABLE)
                    return Joined(stored) if stored is not None else Alone("leader failed")
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(published)
                if not waiters:
                    del self._waiters[key]

    async def _lock_held(self, key: str) -> bool:
        try:
            return bool(
                await self._breaker.call(lambda: self._redis.exists(lock_key(key)), REDIS_FAILURES)
            )
        except (BreakerOpen, *REDIS_FAILURES):
            return False
