"""The answer-cache stage as the app's lifespan opens it: the answer store, the coalescer
(its own subscription client), the replica's hot answers, recalled bodies, Idempotency-Key
claims and, when on, the near-duplicate index; everything it opens is closed by the
lifespan's exit stack."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

from gateway.cache.coalesce import Coalescer
from gateway.cache.idempotency import Claims
from gateway.cache.local import LocalAnswers
from gateway.cache.near.index import NearIndex
from gateway.cache.near.lookup import NearCache
from gateway.cache.near.verify import Bounds
from gateway.cache.recall import RecalledRequests
from gateway.cache.stage import CacheStage
from gateway.cache.store import AnswerCache
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.redis_link import RedisLink, redis_client


async def open_cache_stage(
    settings: Settings,
    metrics: Metrics,
    redis: RedisLink | None,
    model_root: Callable[[str, str | None], str],
    stack: AsyncExitStack,
) -> CacheStage | None:
    """The answer cache and, when on, the coalescer; None without Redis (the cache is off).
    Closed by ``stack``."""
    if redis is None:
        return None
    timeout = settings.redis_socket_timeout_s
    cache = AnswerCache(
        redis.client, redis.breaker, settings.cache_ttl_s, settings.cache_max_value_bytes
    )
    coalescer = None
    if settings.coalesce_enabled:
        # Its own client without a read timeout: the subscription waits for messages.
        # Keepalive: the subscription is idle between messages (the listener pings it too).
        pubsub = redis_client(
            settings.redis_url,
            settings.redis_cluster,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
        )
        stack.push_async_callback(pubsub.aclose)
        coalescer = Coalescer(
            redis.client, pubsub, redis.breaker, cache, settings.cache_namespace,
            settings.coalesce_lease_s, settings.coalesce_wait_timeout_s,
        )  # fmt: skip
        await coalescer.start()
        stack.push_async_callback(coalescer.stop)
    local = None
    if settings.cache_local_max_bytes > 0:
        local = LocalAnswers(
            settings.cache_local_max_bytes,
            settings.cache_local_ttl_s,
            on_size=metrics.cache_local_bytes.set,
        )
    recalled = None
    # Not with the image check: it shows the worker body's images to the model.
    if settings.cache_recall_max_bytes > 0 and not settings.moderation.image_check:
        recalled = RecalledRequests(
            settings.cache_recall_max_bytes, on_size=metrics.cache_recall_bytes.set
        )
    claims = Claims(redis.client, redis.breaker, settings.idempotency_ttl_s)
    near = None
    if settings.cache_near_enabled:
        ttl, namespace = settings.cache_ttl_s, settings.cache_namespace
        index = NearIndex(redis.client, redis.breaker, namespace, ttl)
        bounds = Bounds(
            settings.cache_near_max_distance,
            settings.cache_near_colour_max,
            settings.cache_near_detail_max,
        )
        near = NearCache(index, bounds, settings.cache_near_candidates, metrics)
    return CacheStage(
        cache, coalescer, settings, metrics, model_root, local, recalled, claims, near
    )
