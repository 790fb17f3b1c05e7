"""create_app(settings): the FastAPI app, its middleware, and the one lifespan owning the pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__
from gateway.config import Settings
from gateway.errors import install_error_handlers
from gateway.metrics import Metrics
from gateway.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from gateway.pipeline import Pipeline
from gateway.routes import build_router
from gateway.routes.deps import Services
from gateway.routes.openapi import openapi_builder
from gateway.upstream import Upstream, WorkerPool, create_session

DESCRIPTION = (
    "OpenAI-compatible image+text API in front of vLLM workers serving Qwen3-VL. "
    'Every error has the body {"error": {"message", "type", "param", "code"}}.'
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = Metrics()  # per app: tests can build several apps in one process

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        session = create_session(settings)
        try:
            pool = WorkerPool(session, settings, metrics)
            upstream = Upstream(session, pool, settings, metrics)
            pipeline = Pipeline(settings, pool, upstream, metrics)
            # One poll before serving, so a fresh replica knows its workers and models;
            # bounded by the health timeout when they are down.
            await pool.poll_once()
            await pool.start()
            try:
                yield {"services": Services(settings, metrics, pool, pipeline)}
            finally:
                await pool.stop()
        finally:
            await session.close()

    app = FastAPI(
        title="Qwen3-VL gateway", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app, metrics)
    # Added innermost first: metrics see everything, 413s carry the request id.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(build_router())
    app.openapi = openapi_builder(app, settings)  # type: ignore[method-assign]
    return app
