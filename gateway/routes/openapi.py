"""The OpenAPI document: FastAPI's, plus what it cannot see.

The inference endpoints are plain ASGI (routes/chat.py) and read bodies themselves (size
limit while reading, 415, our own 400s instead of FastAPI's 422), so FastAPI sees neither
their operations nor their request models; both are added here, with the limits that
come from the settings, so the spec matches what the service accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.config import Settings
from gateway.matching.protocol import MatchRequest, MatchResponse
from gateway.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    VQARequest,
    VQAResponse,
)
from gateway.routes import match
from gateway.routes.chat import OPERATIONS
from gateway.routes.openapi_headers import describe_responses

_BODY_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, VQARequest, MatchRequest)
# ErrorResponse comes with FastAPI's own routes (/v1/models declares its errors).
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionResponse,
    ChatCompletionChunk,
    MatchResponse,
    VQAResponse,
)


def openapi_builder(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema["paths"] = {
            # A copy: the document is edited below (security), the declarations are shared.
            **{
                path: {"post": deepcopy(operation)}
                for path, operation in {**OPERATIONS, **match.OPERATIONS}.items()
            },
            **schema.get("paths", {}),
        }
        components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            _add_model(components, model, "validation")
        for model in _RESPONSE_MODELS:
            _add_model(components, model, "serialization")
        _set_bounds(components, settings)
        if settings.auth.enabled:
            _require_bearer(schema)
        describe_responses(schema, limits=settings.auth.enabled)
        app.openapi_schema = schema
        return schema

    return build


def _add_model(components: dict[str, Any], model: type[BaseModel], mode: str) -> None:
    schema = model.model_json_schema(
        ref_template="#/components/schemas/{model}",
        mode="validation" if mode == "validation" else "serialization",
    )
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema


def _require_bearer(schema: dict[str, Any]) -> None:
    """Every /v1/* operation takes an API key as 'Authorization: Bearer <key>'."""
    schemes = schema["components"].setdefault("securitySchemes", {})
    schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "vlm-... API key"}
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]


def _set_bounds(components: dict[str, Any], settings: Settings) -> None:
    """The limits the settings enforce (validation/), in place of the models' own caps."""
    chat = components["ChatCompletionRequest"]["properties"]
    for prop in (chat["max_tokens"], chat["max_completion_tokens"]):
        _set_bound(prop, "integer", "maximum", settings.max_tokens_cap)
    vqa = components["VQARequest"]["properties"]
    _set_bound(vqa["max_tokens"], "integer", "maximum", settings.max_tokens_cap)
    _set_bound(chat["n"], "integer", "maximum", settings.max_choices)
    _set_bound(chat["messages"], "array", "maxItems", settings.max_messages)
    _set_bound(chat["tools"], "array", "maxItems", settings.max_tools)
    content = components["ChatMessage"]["properties"]["content"]
    _set_bound(content, "array", "maxItems", settings.max_content_parts)


def _set_bound(prop: dict[str, Any], kind: str, keyword: str, value: int) -> None:
    for option in prop.get("anyOf", [prop]):
        if option.get("type") == kind:
            option[keyword] = value
