"""POST /v1/chat/completions (OpenAI format, or the simple shape) and POST /v1/vqa."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError
from gateway.interactions.draft import CLIENT_GONE
from gateway.pipeline import RequestContext
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.routes.common import (
    CLIENT_CLOSED_REQUEST,
    error_responses,
    read_json,
    until_disconnect,
)
from gateway.routes.deps import ContextDep, Services, ServicesDep
from gateway.routes.sse import ProxyStreamResponse
from gateway.validation.parse import check_content_type, parse_chat_request, parse_vqa_body

router = APIRouter(tags=["inference"])
# hit | miss | coalesced | bypass: how the answer cache took part (gateway/cache/stage.py).
X_CACHE: Final = "X-Cache"

_ERRORS: Final = error_responses(400, 401, 403, 404, 408, 413, 415, 429, 502, 503, 504)
_REQUEST_ID_PARAM: Final = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Propagated to the worker and echoed back; generated when absent.",
    "schema": {"type": "string"},
}


# OpenAPI 3.1: a text/event-stream schema describes each event. Its data is a JSON
# chat.completion.chunk, an error body in the one shape, or the final [DONE].
_SSE_EVENT: Final = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(*models: type[Any]) -> dict[str, Any]:
    schemas = [_ref(m.__name__) for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {
        "parameters": [_REQUEST_ID_PARAM],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI format), or the simple image+prompt shape",
    response_model=None,
    responses={
        200: {
            "description": "The completion: JSON, or server-sent events when stream is true. "
            'A body without `messages` is the simple shape and gets `{"text": ...}`.',
            "content": {
                "application/json": {
                    "schema": {"anyOf": [_ref("ChatCompletionResponse"), _ref("VQAResponse")]}
                },
                "text/event-stream": {"schema": _SSE_EVENT},
            },
        },
        **_ERRORS,
    },
    openapi_extra=_body(ChatCompletionRequest, VQARequest),
)
async def chat_completions(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    if services.parser is not None:
        parsed = await services.parser.parse_chat(raw)
    else:
        parsed = await parse_chat_request(raw, services.settings)
    if isinstance(parsed, VQARequest):
        return await _vqa(request, services, ctx, parsed)
    if parsed.stream:
        streamed = await until_disconnect(request, services.pipeline.chat_stream(ctx, parsed))
        if streamed is None:
            return _client_gone(services, ctx)

        def on_error(error: GatewayError) -> None:
            services.metrics.errors.labels(error.code.value).inc()
            ctx.draft.fail(error.type, error.code.value)

        def on_disconnect() -> None:
            services.metrics.client_disconnects.labels(ctx.route).inc()
            ctx.draft.fail("client_error", CLIENT_GONE)

        return ProxyStreamResponse(
            streamed.stream, on_error, on_disconnect, {X_CACHE: streamed.cache}
        )
    answer = await until_disconnect(request, services.pipeline.chat(ctx, parsed))
    if answer is None:
        return _client_gone(services, ctx)
    return Response(answer.body, media_type="application/json", headers={X_CACHE: answer.cache})


@router.post(
    "/v1/vqa",
    summary="The simple shape: one image and a prompt, the answer's text",
    response_model=None,
    responses={
        200: {
            "description": "The answer.",
            "content": {"application/json": {"schema": _ref("VQAResponse")}},
        },
        **_ERRORS,
    },
    openapi_extra=_body(VQARequest),
)
async def vqa(request: Request, services: ServicesDep, ctx: ContextDep) -> Response:
    parsed = parse_vqa_body(await read_json(request))
    return await _vqa(request, services, ctx, parsed)


async def _vqa(
    request: Request, services: Services, ctx: RequestContext, parsed: VQARequest
) -> Response:
    result = await until_disconnect(request, services.pipeline.vqa(ctx, parsed))
    if result is None:
        return _client_gone(services, ctx)
    answer, cache = result
    return JSONResponse(answer.model_dump(), headers={X_CACHE: cache})


def _client_gone(services: Services, ctx: RequestContext) -> Response:
    services.metrics.client_disconnects.labels(ctx.route).inc()
    ctx.draft.fail("client_error", CLIENT_GONE)
    return Response(status_code=CLIENT_CLOSED_REQUEST)
