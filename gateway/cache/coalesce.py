"""Identical in-flight requests share one generation, across every gateway replica.

The first request for a key takes a short Redis lease (SET NX PX ``lease_s``) and becomes
the leader; it renews the lease while it generates, then stores the answer, publishes it
on the key's channel and releases the lease, in one script. Requests for the same key
that arrive meanwhile, on any replica, wait: for the published answer, or for the stored
one (checked in case the leader finished before they listened).

When the leader fails, the waiters elect exactly one new leader among themselves (the
same SET NX: one of them wins, the others wait for it), instead of each calling a worker:
one dropped phone among 50 identical requests costs one more generation, not 49. A
failure is seen two ways: the leader's failure notice (it has no answer to share), or
its lease lapsing (its replica died: SIGKILL, OOM, node loss; no notice ever comes), so
waiters are answered within the lease plus one generation. A leader whose answer is
refused by moderation publishes it without storing it: the waiters' own checks refuse it
again, and nobody generates it twice. A waiter gives up (and calls a worker itself) only
after ``max_elections`` failed leaders or ``wait_timeout_s``.

Inside one replica, a second identical request joins the local leader's future
directly, without a Redis round trip. When Redis cannot be asked (down, or its breaker
open), the first request leads for this replica alone (``Lead.local_only``) and identical
requests join it the same way: an outage costs one generation per question per replica,
not one per request.

Streaming waiters get the finished answer replayed as SSE once the leader is done, rather
than a live fan-out of the leader's chunks: replaying is exact (the same chunks a cache
hit gets), survives a leader on another replica, and needs no per-token pub/sub traffic.

The answer key carries a Redis Cluster hash tag ("...:answer:{sha}"), so the answer and
its lease live in one slot and the two-key scripts run on a cluster too.

Each replica keeps one pattern subscription for all keys (not one connection per waiter),
owned by the lifespan through start() and stop(). On a cluster it is regular pub/sub on
one node: the cluster bus carries every PUBLISH to every node, once per generation (never
per token). Sharded pub/sub would keep each message in its shard, but it has no pattern
form: every waiter would SSUBSCRIBE and SUNSUBSCRIBE its key, two round trips more per
coalesced request, on a connection to every shard. Its connection is silent between
messages, so the listener pings it: a connection that does not answer within
``keepalive_s`` is dropped and opened again (a half-open TCP connection would otherwise
leave every waiter of the replica polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Final

from redis.asyncio.client import PubSub

from gateway.answers import CachedAnswer
from gateway.background import cancel_task
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.cache.store import AnswerCache, CacheUnavailable
from gateway.redis_link import REDIS_FAILURES, RedisClient, Script, subscriber

logger = logging.getLogger(__name__)

# One round trip for the lookup: the stored answer, else try to become the leader.
# KEYS: answer, lease. ARGV: token, lease (ms). Returns {1, answer} | {2} lead | {3} wait.
_LOOKUP_SCRIPT: Final = """
local answer = redis.call('get', KEYS[1])
if answer then return {1, answer} end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"""
# The leader extends its lease while it still holds it. KEYS: lease. ARGV: token, ms.
_RENEW_SCRIPT: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# One round trip for the leader's end: store (ttl > 0), publish, release the lease if it
# is still ours (after a lapse another leader may hold it).
# KEYS: answer, lease. ARGV: value, ttl (s, 0: do not store), channel, payload, token.
_FINISH_SCRIPT: Final = """
if ARGV[2] ~= '0' then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('publish', ARGV[3], ARGV[4])
if redis.call('get', KEYS[2]) == ARGV[5] then redis.call('del', KEYS[2]) end
return 1
"""
_FAILED: Final = b"-"  # published when the leader has no answer to share
REDIS_UNAVAILABLE: Final = "redis unavailable"


def lock_key(key: str) -> str:
    """The key's lease: same hash tag as the answer key, so the same cluster slot."""
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
    renewal: asyncio.Task[None] | None = field(default=None, repr=False)
    # Redis could not be asked: this replica's identical requests wait for it, no others.
    local_only: bool = False


@dataclass(frozen=True, slots=True)
class Alone:
    """No coalescing for this request (Redis unavailable, leaders failed, waited too long)."""

    reason: str


Outcome = Stored | Joined | Lead | Alone


class Coalescer:
    def __init__(
        self,
        redis: RedisClient,
        pubsub_redis: RedisClient,
        breaker: CircuitBreaker,
        cache: AnswerCache,
        namespace: str,
        lease_s: float,
        wait_timeout_s: float,
        poll_interval_s: float = 0.5,
        max_elections: int = 3,
        keepalive_s: float = 10.0,
    ) -> None:
        self._redis = redis
        # EVALSHA: the scripts' text is sent once, not with every lookup.
        self._lookup = Script(redis, _LOOKUP_SCRIPT)
        self._renew_lease = Script(redis, _RENEW_SCRIPT)
        self._finish = Script(redis, _FINISH_SCRIPT)
        self._pubsub_redis = pubsub_redis
        self._breaker = breaker
        self._cache = cache
        self._pattern = f"{namespace}:*:done"
        self._lease_ms = max(1, int(lease_s * 1000))
        self._wait_timeout_s = wait_timeout_s
        # A lapsed lease is noticed within this long; never slower than a third of it.
        self._poll_interval_s = min(poll_interval_s, lease_s / 3)
        self._max_elections = max_elections
        self._keepalive_s = keepalive_s
        self._local_leaders: dict[str, asyncio.Future[CachedAnswer | None]] = {}
        self._waiters: dict[str, set[asyncio.Future[bytes]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._renewals: set[asyncio.Task[None]] = set()
        self.listener_reconnects = 0
        self.listening = False  # Redis confirmed the pattern subscription

    # -- lifespan -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever(), name="coalesce-listener")

    async def stop(self) -> None:
        await cancel_task(self._listener)
        for renewal in list(self._renewals):
            await cancel_task(renewal)
        for future in self._local_leaders.values():
            if not future.done():
                future.set_result(None)

    async def _listen_forever(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with await subscriber(self._pubsub_redis) as pubsub:
                    await pubsub.psubscribe(self._pattern)
                    backoff = 0.2
                    await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone or silent: waiters poll meanwhile
                self.listening = False
                self.listener_reconnects += 1
                logger.warning("coalescing listener lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _listen(self, pubsub: PubSub) -> None:
        """Deliver messages; ping when the connection has been quiet for a while, and give
        it up when even the ping gets no answer (a half-open connection never errors)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self._keepalive_s / 2))
            now = loop.time()
            if message is not None:
                heard, pinged = now, False
                if message.get("type") == "pmessage":
                    self._deliver(message["channel"], message["data"])
                elif message.get("type") == "psubscribe":
                    self.listening = True
                continue
            quiet = now - heard
            if quiet > 2 * self._keepalive_s:
                raise ConnectionError("the subscription's connection stopped answering")
            if quiet > self._keepalive_s and not pinged:
                await pubsub.ping()
                pinged = True

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
        one in flight (electing a new leader when it fails)."""
        return await self._acquire(key, elections=0)

    async def _acquire(self, key: str, elections: int) -> Outcome:
        local = self._local_leaders.get(key)
        if local is not None:
            return await self._join_local(key, local, elections)
        token = secrets.token_hex(8)
        try:
            found = await self._breaker.call(
                lambda: self._lookup((key, lock_key(key)), (token, self._lease_ms)),
                REDIS_FAILURES,
            )
        except (BreakerOpen, *REDIS_FAILURES):
            return await self._without_redis(key, elections)
        if found[0] == 1:
            stored = CachedAnswer.decode(found[1])
            if stored is None:
                return Alone("unreadable answer")
            return Stored(stored) if elections == 0 else Joined(stored)
        # Another request of this replica may have become leader while we awaited Redis.
        local = self._local_leaders.get(key)
        if found[0] == 2:
            if local is not None:  # impossible while we hold the lease; be safe anyway
                await self._finish_remote(key, token, None, None)
                return await self._join_local(key, local, elections)
            return self._lead(key, token)
        if local is not None:
            return await self._join_local(key, local, elections)
        return await self._wait_remote(key, elections)

    async def _without_redis(self, key: str, elections: int) -> Outcome:
        """Redis cannot be asked: join this replica's leader, or lead for this replica."""
        local = self._local_leaders.get(key)  # one may have started while we awaited Redis
        if local is not None:
            return await self._join_local(key, local, elections)
        return self._lead(key, "", local_only=True)

    def _lead(self, key: str, token: str, local_only: bool = False) -> Lead:
        future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        self._local_leaders[key] = future
        lead = Lead(key, token, future, local_only=local_only)
        if local_only:
            return lead  # no lease to renew
        lead.renewal = asyncio.create_task(self._renew(lead), name="coalesce-lease")
        self._renewals.add(lead.renewal)
        lead.renewal.add_done_callback(self._renewals.discard)
        return lead

    async def _renew(self, lead: Lead) -> None:
        """Keep the lease while the leader generates: a third of it between renewals, so
        one slow round trip does not let it lapse."""
        keys = lock_key(lead.key)
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                held = await self._renew_lease((keys,), (lead.token, self._lease_ms))
            except REDIS_FAILURES:
                continue  # Redis is away: the waiters cannot see the lease either
            if not held:
                # Lapsed (Redis was unreachable longer than the lease) and maybe taken:
                # generate on; the answer is still stored and published at the end.
                logger.warning("coalescing lease of %s lost while generating", lead.key)
                return

    async def finish(
        self, lead: Lead, answer: CachedAnswer | None, store_ttl_s: int | None
    ) -> None:
        """Store the leader's answer (when store_ttl_s is given), share it (None: it has
        none) and release the lease, in one round trip: stored before published, so a
        waiter that looks in the cache instead of listening finds it. An answer shared
        without store_ttl_s (refused, too large) reaches the waiters but not the cache."""
        await cancel_task(lead.renewal)
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
                lambda: self._finish(keys, args),
                REDIS_FAILURES,
            )

    async def _join_local(
        self, key: str, future: asyncio.Future[CachedAnswer | None], elections: int
    ) -> Outcome:
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), self._wait_timeout_s)
        except TimeoutError:
            return Alone("waited too long")
        if answer is not None:
            return Joined(answer)
        return await self._elect(key, elections)

    async def _elect(self, key: str, elections: int) -> Outcome:
        """The leader failed: try to become the next one (one waiter wins the lease)."""
        if elections >= self._max_elections:
            return Alone("leader failed")
        return await self._acquire(key, elections + 1)

    async def _wait_remote(self, key: str, elections: int) -> Outcome:
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
                    if answer is not None:
                        return Joined(answer)
                    break  # the leader's failure notice
                if not await self._lock_held(key):
                    break  # the lease lapsed (the leader died) or it ended unseen
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(published)
                if not waiters:
                    del self._waiters[key]
        return await self._elect(key, elections)

    async def _lock_held(self, key: str) -> bool:
        try:
            return bool(
                await self._breaker.call(lambda: self._redis.exists(lock_key(key)), REDIS_FAILURES)
            )
        except (BreakerOpen, *REDIS_FAILURES):
            return False
