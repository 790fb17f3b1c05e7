"""create_app(settings): the FastAPI app, its middleware, and the one lifespan owning the pools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from gateway import __version__
from gateway.admission import AdmissionMiddleware, AdmissionSlot, open_admission
from gateway.breaker import CircuitBreaker
from gateway.cache.coalesce import Coalescer
from gateway.cache.stage import CacheStage
from gateway.cache.store import AnswerCache
from gateway.config import Settings
from gateway.db.engine import create_log_engine
from gateway.errors import install_error_handlers
from gateway.interactions import InteractionLogMetrics, InteractionWriter
from gateway.interactions.middleware import InteractionLogMiddleware, RecordSink
from gateway.metrics import Metrics
from gateway.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from gateway.moderation import Moderator, open_moderator
from gateway.pipeline import CHAT_PATH, Pipeline
from gateway.remote_images import open_fetcher
from gateway.routes import build_router
from gateway.routes.deps import Services
from gateway.routes.openapi import openapi_builder
from gateway.upstream.pool import WorkerPool
from gateway.upstream.proxy import Upstream, create_session

DESCRIPTION = (
    "OpenAI-compatible image+text API in front of vLLM workers serving Qwen3-VL. "
    'Every error has the body {"error": {"message", "type", "param", "code"}}. '
    "Answers carry X-Cache: hit, miss, coalesced or bypass."
)


def _redis(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack
) -> tuple[Redis, CircuitBreaker] | None:
    """The request path's Redis client (closed by the exit stack) and its breaker, shared
    by the answer cache and moderation's image verdicts; None when the cache is off."""
    if not settings.cache_enabled:
        return None
    timeout = settings.redis_socket_timeout_s
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    stack.push_async_callback(redis.aclose)
    breaker = CircuitBreaker(
        settings.redis_breaker_open_s,
        on_state_change=lambda state: metrics.cache_breaker_state.set(int(state)),
    )
    return redis, breaker


async def _cache_stage(
    settings: Settings,
    metrics: Metrics,
    pool: WorkerPool,
    redis_and_breaker: tuple[Redis, CircuitBreaker] | None,
    stack: AsyncExitStack,
) -> CacheStage | None:
    """Cache and coalescer; closed by the exit stack."""
    if redis_and_breaker is None:
        return None
    redis, breaker = redis_and_breaker
    timeout = settings.redis_socket_timeout_s
    cache = AnswerCache(redis, breaker, settings.cache_ttl_s, settings.cache_max_value_bytes)
    coalescer = None
    if settings.coalesce_enabled:
        # Its own client without a read timeout: the subscription waits for messages.
        pubsub = Redis.from_url(settings.redis_url, socket_connect_timeout=timeout)
        stack.push_async_callback(pubsub.aclose)
        coalescer = Coalescer(
            redis, pubsub, breaker, cache, settings.cache_namespace,
            settings.coalesce_lock_ttl_s, settings.coalesce_wait_timeout_s,
        )  # fmt: skip
        await coalescer.start()
        stack.push_async_callback(coalescer.stop)
    return CacheStage(cache, coalescer, settings, metrics, pool.model_root)


async def _moderator(
    settings: Settings,
    metrics: Metrics,
    upstream: Upstream,
    redis_and_breaker: tuple[Redis, CircuitBreaker] | None,
) -> Moderator | None:
    def ask(body: bytes, request_id: str, digest: str) -> Awaitable[bytes]:
        return upstream.post_json(CHAT_PATH, body, request_id, affinity_key=digest)

    redis, breaker = redis_and_breaker or (None, None)
    return await open_moderator(
        settings.moderation, metrics, ask, redis, breaker, settings.cache_namespace
    )


async def _interaction_writer(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack
) -> InteractionWriter:
    log = settings.log
    engine = None
    if log.enabled:
        engine = create_log_engine(
            log.database_url.get_secret_value(), connect_timeout_s=log.connect_timeout_s
        )
        stack.push_async_callback(engine.dispose)
    writer = InteractionWriter(engine, log, InteractionLogMetrics(metrics.registry))
    await writer.start()
    # Closed before the engine is disposed: the queue is written or spooled first.
    stack.push_async_callback(writer.close)
    return writer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = Metrics()  # per app: tests can build several apps in one process
    sink = RecordSink()
    admission = AdmissionSlot()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            session = create_session(settings)
            stack.push_async_callback(session.close)
            sink.writer = await _interaction_writer(settings, metrics, stack)
            admission.control = await open_admission(settings, metrics, stack)
            pool = WorkerPool(session, settings, metrics)
            upstream = Upstream(session, pool, settings, metrics)
            redis_and_breaker = _redis(settings, metrics, stack)
            cache = await _cache_stage(settings, metrics, pool, redis_and_breaker, stack)
            remote_images = open_fetcher(
                settings.remote_images, settings.max_body_bytes, metrics, stack
            )
            moderator = await _moderator(settings, metrics, upstream, redis_and_breaker)
            pipeline = Pipeline(settings, pool, upstream, metrics, cache, remote_images, moderator)
            # One poll before serving, so a fresh replica knows its workers and models;
            # bounded by the health timeout when they are down.
            await pool.poll_once()
            await pool.start()
            stack.push_async_callback(pool.stop)
            yield {"services": Services(settings, metrics, pool, pipeline)}

    app = FastAPI(
        title="Qwen3-VL gateway", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app, metrics)
    # Added innermost first: metrics see everything, 413s carry the request id and are
    # logged as interactions; keys are checked before a body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        metrics=metrics,
    )
    app.add_middleware(AdmissionMiddleware, slot=admission, metrics=metrics)
    app.add_middleware(InteractionLogMiddleware, sink=sink)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(build_router())
    app.openapi = openapi_builder(app, settings)  # type: ignore[method-assign]
    return app
