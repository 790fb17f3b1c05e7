"""create_app(settings): the FastAPI app, its middleware, and the one lifespan owning the pools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.admission import AdmissionMiddleware, AdmissionSlot, open_admission
from gateway.batch.lane import BatchLineMiddleware
from gateway.batch.store import open_batch_store
from gateway.cache.opening import open_cache_stage
from gateway.cache.store import open_redis
from gateway.config import Settings
from gateway.cors import cors_middleware
from gateway.errors import ErrorBoundary, install_error_handlers
from gateway.interactions import open_interaction_writer
from gateway.interactions.middleware import InteractionLogMiddleware, RecordSink
from gateway.loop_lag import LoopLag
from gateway.matching.stage import Matcher
from gateway.metrics import Metrics
from gateway.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from gateway.moderation import open_moderator
from gateway.moderation.images import AskWorker
from gateway.pipeline import CHAT_PATH, Pipeline
from gateway.remote_images import open_fetcher
from gateway.routes import build_router, inference_routes
from gateway.routes.deps import Services
from gateway.routes.openapi import openapi_builder
from gateway.upstream.pool import open_pool
from gateway.upstream.proxy import Upstream, open_session
from gateway.validation.offload import open_body_parser

DESCRIPTION = (
    "OpenAI-compatible image+text API in front of vLLM workers serving Qwen3-VL. "
    'Every error has the body {"error": {"message", "type", "param", "code"}}. '
    "Answers carry X-Cache: hit, miss, coalesced or bypass."
)


def _ask_worker(upstream: Upstream) -> AskWorker:
    """How moderation's image check asks the served model, through the same upstream."""

    def ask(body: bytes, request_id: str, digest: str) -> Awaitable[bytes]:
        return upstream.post_json(CHAT_PATH, body, request_id, affinity_key=digest)

    return ask


class GatewayApp(FastAPI):
    """FastAPI, with the inference endpoints on a lane of their own.

    A POST to an inference path goes through our middleware straight to its plain ASGI
    endpoint: past FastAPI's generic layers (its error, telemetry and body-limit
    middleware, exception and exit-stack middleware, routing), which cost a large share
    of a cache hit's CPU. Every other request, a wrong method on those paths included
    (405), takes FastAPI's way, through the same middleware and the same endpoints.
    """

    lanes: Mapping[str, tuple[BaseRoute, ASGIApp]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope["path"]) if scope["type"] == "http" else None
        if lane is None or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        # The route, as Starlette's router would set it: metrics label by its path.
        scope["route"], app = lane
        await app(scope, receive, send)


def _lanes(
    routes: list[Route], middleware: list[Middleware], metrics: Metrics
) -> dict[str, tuple[BaseRoute, ASGIApp]]:
    """Each inference endpoint wrapped in the app's middleware and the error boundary."""
    lanes: dict[str, tuple[BaseRoute, ASGIApp]] = {}
    for route in routes:
        wrapped: ASGIApp = ErrorBoundary(route.app, metrics)
        for cls, args, kwargs in reversed(middleware):
            wrapped = cls(wrapped, *args, **kwargs)
        lanes[route.path] = (route, wrapped)
    return lanes


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = Metrics()  # per app: tests can build several apps in one process
    metrics.cache_namespace.labels(settings.cache_namespace).set(1)
    sink = RecordSink()
    admission = AdmissionSlot()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            # First: Redis deadlines leave out the time this loop was held by other work.
            lag = LoopLag(on_late=metrics.event_loop_stalled.inc)
            await lag.start()
            stack.push_async_callback(lag.stop)
            session = open_session(settings, stack)
            sink.writer = await open_interaction_writer(settings.log, metrics.registry, stack)
            admission.control = await open_admission(settings, metrics, stack, lag)
            pool = await open_pool(session, settings, metrics, stack, lag)
            upstream = Upstream(session, pool, settings, metrics)
            redis = await open_redis(settings, metrics, stack, lag)
            cache = await open_cache_stage(settings, metrics, redis, pool.model_root, stack)
            remote_images = open_fetcher(
                settings.remote_images, settings.max_body_bytes, metrics, stack
            )
            moderator = await open_moderator(
                settings.moderation, metrics, _ask_worker(upstream), redis, settings.cache_namespace
            )
            pipeline = Pipeline(settings, pool, upstream, metrics, cache, remote_images, moderator)
            parser = open_body_parser(settings, stack)
            matcher = Matcher(settings, pool, upstream, metrics, cache, remote_images, moderator)
            batches = open_batch_store(settings, stack)
            services = Services(settings, metrics, pool, pipeline, parser, batches, matcher)
            yield {"services": services}

    # Outermost first: metrics see everything, 413s carry the request id and are logged
    # as interactions; keys are checked before a body is read.
    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(RequestIdMiddleware),
        # Preflights are answered here, before keys, limits and the interaction log.
        *cors_middleware(settings.cors_origins),
        Middleware(
            InteractionLogMiddleware,
            sink=sink,
            metrics=metrics,
            trusted_proxies=settings.log.trusted_proxies,
        ),
        # Batch lines (the runner's, gateway/batch/lane.py): a priority and their batch id.
        Middleware(
            BatchLineMiddleware,
            token=settings.batch.runner_token,
            priority=settings.batch.priority,
            metrics=metrics,
        ),
        Middleware(AdmissionMiddleware, slot=admission, metrics=metrics),
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=settings.max_body_bytes,
            read_timeout_s=settings.body_read_timeout_s,
            metrics=metrics,
        ),
    ]
    app = GatewayApp(
        title="Qwen3-VL gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        middleware=middleware,
    )
    install_error_handlers(app, metrics)
    inference = inference_routes()
    app.router.routes.extend(inference)
    app.include_router(build_router())
    app.lanes = _lanes(inference, middleware, metrics)
    app.openapi = openapi_builder(app, settings)  # type: ignore[method-assign]
    return app
