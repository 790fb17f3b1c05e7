"""In-process servers: any ASGI app under uvicorn in the test's event loop, and test
gateways with small limits (so each limit is cheap to cross)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.config import Settings
from gateway.interactions import InteractionLogSettings

# Limits shared by every test gateway (small, so each limit is cheap to cross).
TEST_LIMITS: dict[str, Any] = {
    "max_body_bytes": 256 * 1024,
    "max_images": 2,
    "max_image_pixels": 1_000_000,
    "max_tokens_cap": 1500,
    "default_max_tokens": 16,
    "max_prompt_chars": 2000,
}


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn (httptools) in this event loop, on a free port by default."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


def gateway_settings(*worker_urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **TEST_LIMITS,
        "worker_urls": worker_urls,
        "health_interval_s": 0.5,
        # Cache and log have tests of their own (test_cache_http, test_interactions_http);
        # here every request must reach the worker, and no database is needed.
        "cache_enabled": False,
        "log": InteractionLogSettings(enabled=False),
        # API keys and rate limits have tests of their own (test_auth_http, ...).
        "auth": AuthSettings(enabled=False),
        # In-process apps are many and short-lived: no body-parser child until one is needed.
        "parse_process_warm": False,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def run_gateway(*worker_urls: str, **overrides: Any) -> AsyncIterator[str]:
    async with serve(create_app(gateway_settings(*worker_urls, **overrides))) as url:
        yield url
