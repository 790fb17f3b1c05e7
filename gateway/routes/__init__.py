"""Thin HTTP handlers: parse, call the pipeline, render."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.routes import batches, chat, health, match, metrics, models


class Endpoint:
    """A plain ASGI endpoint as a route (Starlette wraps bare functions as handlers of a
    Request); the route also answers other methods with 405 and an Allow header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def inference_routes() -> list[Route]:
    """The inference endpoints: the app's first routes, and its lanes (gateway/app.py)."""
    endpoints = {**chat.ENDPOINTS, **match.ENDPOINTS}
    return [Route(path, Endpoint(app), methods=["POST"]) for path, app in endpoints.items()]


def build_router() -> APIRouter:
    """FastAPI's routes: everything but inference."""
    router = APIRouter()
    for module in (models, health, metrics, batches):
        router.include_router(module.router)
    return router
