"""Thin HTTP handlers: parse, call the pipeline, render."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.routes import chat, health, metrics, models


def build_router() -> APIRouter:
    router = APIRouter()
    for module in (chat, models, health, metrics):
        router.include_router(module.router)
    return router
