"""create_app(settings): the FastAPI app, its middleware, and the one lifespan owning the pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from gateway import __version__
from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache
from gateway.caching import CacheStage
from gateway.coalesce import Coalescer
from gateway.config import Settings
from gateway.db.engine import create_log_engine
from gateway.errors import install_error_handlers
from gateway.interaction_log import InteractionLogMiddleware, RecordSink
from gateway.interactions import InteractionLogMetrics, InteractionWriter
from gateway.metrics import Metrics
from gateway.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from gateway.pipeline import Pipeline
from gateway.pool import WorkerPool
from gateway.routes import build_router
from gateway.routes.deps import Services
from gateway.routes.openapi import openapi_builder
from gateway.upstream import Upstream, create_session

DESCRIPTION = (
    "OpenAI-compatible image+text API in front of vLLM workers serving Qwen3-VL. "
    'Every error has the body {"error": {"message", "type", "param", "code"}}. '
    "Answers carry X-Cache: hit, miss, coalesced or bypass."
)


async def _cache_stage(
    settings: Settings, metrics: Metrics, pool: WorkerPool, stack: AsyncExitStack
) -> CacheStage | None:
    """Redis clients, breaker, cache and coalescer; closed by the exit stack."""
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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            session = create_session(settings)
            stack.push_async_callback(session.close)
            sink.writer = await _interaction_writer(settings, metrics, stack)
            pool = WorkerPool(session, settings, metrics)
            upstream = Upstream(session, pool, settings, metrics)
            cache = await _cache_stage(settings, metrics, pool, stack)
            pipeline = Pipeline(settings, pool, upstream, metrics, cache)
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
    # logged as interactions.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(InteractionLogMiddleware, sink=sink)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(build_router())
    app.openapi = openapi_builder(app, settings)  # type: ignore[method-assign]
    return app
