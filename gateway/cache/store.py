"""The answer cache: which requests are cacheable, their key, and get/put in Redis.

Key derivation (gateway/cache/keys.py)
-------------------------------------
A key is sha256 over length-prefixed fields (8-byte big-endian length, then the
bytes), so no two different field lists can produce the same byte stream:

1. the cache format version (CACHE_FORMAT_VERSION) and the namespace;
2. the served model and its revision/profile (a new checkpoint is a new key);
3. the canonical request: the JSON the worker receives with every image replaced
   by "sha256:<digest of its decoded bytes>", keys sorted, no whitespace, and
   the fields that only change the answer's *shape* removed (`stream`,
   `stream_options`). It holds the whole message structure and text and every
   sampling parameter (temperature, top_p, seed, stop, max_tokens, penalties);
4. the image digests, in order.

Because images enter as digests of their decoded bytes, the same photo sent as
bare base64 or as a data URI, with any declared MIME type, is the same key; a
photo that differs by one pixel is different bytes and a different key.

Policy
------
* Cacheable only when the request asks for a deterministic answer: temperature 0
  (greedy decoding), or an explicit seed (vLLM seeds the request's own sampler).
  A request with neither asked for a fresh sample; replaying one would quietly
  change what it means. `cache_seeded_requests=False` limits caching to greedy.
* finish_reason "length" is cached: max_tokens is part of the key, so the same
  request deterministically ends at the same length; the client gets exactly
  what the worker would have produced.
* Errors, moderated answers and broken streams are never stored (the pipeline
  only offers complete answers), nor values over `max_value_bytes`.
* Values are compact: the answer text, its finish reason and token counts.
  Memory is bounded by the TTL and the value cap; every key is namespaced.

Redis failures never fail a request: every call goes through a circuit breaker
with a short deadline, counted in time the event loop was responsive (a busy replica is
not a slow Redis: gateway/loop_lag.py), and a failed or skipped call is a cache bypass.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from gateway.answers import CachedAnswer
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.config import Settings
from gateway.loop_lag import LoopLag
from gateway.metrics import Metrics
from gateway.redis_link import (
    REDIS_FAILURES,
    RedisClient,
    RedisLink,
    check_cluster_setting,
    redis_breaker,
    redis_client,
    socket_timeout,
)


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    """What the client's Cache-Control header allows."""

    read: bool = True  # no-cache: skip the lookup
    write: bool = True  # no-store: skip the store

    @classmethod
    def from_header(cls, value: str | None) -> CacheDirectives:
        tokens = {t.strip().lower().split("=", 1)[0] for t in (value or "").split(",")}
        return cls(read="no-cache" not in tokens, write="no-store" not in tokens)


class AnswerCache:
    """get/put of answers in Redis, failing open through the breaker."""

    def __init__(
        self,
        redis: RedisClient,
        breaker: CircuitBreaker,
        ttl_seconds: int,
        max_value_bytes: int,
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        self._ttl = ttl_seconds
        self._max_value_bytes = max_value_bytes

    async def get(self, key: str) -> CachedAnswer | None:
        """The stored answer; None on a miss. Raises CacheUnavailable when Redis is
        down or the breaker is open, so the caller can count a bypass."""
        raw = await self._call(lambda: self._redis.get(key))
        if raw is None:
            return None
        return CachedAnswer.decode(raw)

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    def fits(self, answer: CachedAnswer) -> bool:
        return len(answer.encode()) <= self._max_value_bytes

    async def put(self, key: str, answer: CachedAnswer, ttl_s: int | None = None) -> bool:
        """Store the answer (for ``ttl_s``, else the cache's TTL); False when it is too
        large to keep. Raises CacheUnavailable."""
        if not self.fits(answer):
            return False
        ex = ttl_s or self._ttl
        await self._call(lambda: self._redis.set(key, answer.encode(), ex=ex))
        return True

    async def delete(self, key: str) -> None:
        """Forget an answer. Raises CacheUnavailable."""
        await self._call(lambda: self._redis.delete(key))

    async def _call(self, operation: Any) -> Any:
        return await guarded(self._breaker, operation)


async def guarded(breaker: CircuitBreaker, operation: Any) -> Any:
    """A Redis operation under the breaker: an open breaker or a Redis failure is
    CacheUnavailable, which every caller turns into an outcome, never a client error."""
    try:
        return await breaker.call(operation, REDIS_FAILURES)
    except BreakerOpen:
        raise CacheUnavailable("breaker open") from None
    except REDIS_FAILURES as exc:
        raise CacheUnavailable(type(exc).__name__) from None


class CacheUnavailable(Exception):
    """Redis could not be used for this call; the request goes on without the cache."""


async def open_redis(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack, lag: LoopLag | None = None
) -> RedisLink | None:
    """The request path's Redis client (closed by ``stack``) and its breaker, shared by the
    answer cache and moderation's image verdicts; None when the cache is off. ``lag``: the
    event loop's lag, which the round trips' deadline does not count."""
    if not settings.cache_enabled:
        return None
    timeout = settings.redis_socket_timeout_s
    url, cluster = settings.redis_url, settings.redis_cluster
    await check_cluster_setting(url, cluster, "GATEWAY_REDIS_CLUSTER", timeout)
    # The breaker's deadline bounds every call, connecting included; the client's own
    # timeouts are only a backstop.
    backstop = socket_timeout(timeout)
    redis = redis_client(url, cluster, socket_timeout=backstop, socket_connect_timeout=backstop)
    stack.push_async_callback(redis.aclose)
    breaker = redis_breaker(
        timeout,
        settings.redis_breaker_open_s,
        settings.redis_breaker_failures,
        lag,
        on_state_change=lambda state: metrics.cache_breaker_state.set(int(state)),
    )
    return RedisLink(redis, breaker)
