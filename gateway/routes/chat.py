"""POST /v1/chat/completions (OpenAI format, or the simple shape) and POST /v1/vqa.

Plain ASGI endpoints: the app serves them on a lane of their own, past FastAPI's routing
and dependency machinery (gateway/app.py), since they are every inference request. Their
OpenAPI operations are declared here and added to the document by routes/openapi.py.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final

import orjson
from starlette.types import Receive, Scope, Send

from gateway.cache.idempotency import HEADER_PATTERN as IDEMPOTENCY_KEY
from gateway.cache.recall import Recall, Recalled
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.draft import CLIENT_GONE
from gateway.middleware import request_header
from gateway.pipeline import RequestContext
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.routes.common import (
    CLIENT_CLOSED_REQUEST,
    INFERENCE_ERROR_STATUSES,
    ClientGone,
    error_operations,
    read_body,
    until_disconnect,
)
from gateway.routes.deps import Services, context_of, services_of
from gateway.routes.sse import ProxyStreamResponse
from gateway.validation.parse import check_content_type

CHAT_COMPLETIONS: Final = "/v1/chat/completions"
VQA: Final = "/v1/vqa"
# hit | miss | coalesced | bypass: how the answer cache took part (gateway/cache/stage.py).
X_CACHE: Final = "X-Cache"
_JSON: Final = (b"content-type", b"application/json")


async def _send_json(send: Send, body: bytes, cache: str) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-cache", cache.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _client_gone(send: Send, services: Services, ctx: RequestContext) -> None:
    services.metrics.client_disconnects.labels(ctx.route).inc()
    ctx.draft.fail("client_error", CLIENT_GONE)
    headers = [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _body(scope: Scope, receive: Receive) -> bytes | None:
    check_content_type(request_header(scope, b"content-type"))
    try:
        return await read_body(receive)
    except ClientGone:
        return None


async def _parse_chat(services: Services, raw: bytes) -> ChatCompletionRequest | VQARequest:
    return await services.parser.parse_chat(raw)


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    services, ctx = services_of(scope), context_of(scope, idempotent=True)
    raw = await _body(scope, receive)
    if raw is None:
        return await _client_gone(send, services, ctx)
    # A body whose answer was found before is not parsed again (gateway/cache/recall.py).
    recall = services.pipeline.recall(CHAT_COMPLETIONS, raw, partial(_parse_chat, services, raw))
    parsed = recall.found if recall and recall.found else await _parse_chat(services, raw)
    if isinstance(parsed, VQARequest) or (isinstance(parsed, Recalled) and parsed.vqa):
        return await _vqa(receive, send, services, ctx, parsed, recall)
    if parsed.stream:
        streaming = services.pipeline.chat_stream(ctx, parsed, recall)
        streamed = await until_disconnect(receive, streaming)
        if streamed is None:
            return await _client_gone(send, services, ctx)

        def on_error(error: GatewayError) -> None:
            services.metrics.errors.labels(error.code.value).inc()
            ctx.draft.fail(error.type, error.code.value)
            if error.code is ErrorCode.INTERNAL_ERROR:
                ctx.draft.status = error.status  # a bug of ours, after the stream's 200

        def on_disconnect() -> None:
            services.metrics.client_disconnects.labels(ctx.route).inc()
            ctx.draft.fail("client_error", CLIENT_GONE)

        response = ProxyStreamResponse(
            streamed.stream, on_error, on_disconnect, {X_CACHE: streamed.cache}
        )
        return await response(scope, receive, send)
    answer = await until_disconnect(receive, services.pipeline.chat(ctx, parsed, recall))
    if answer is None:
        return await _client_gone(send, services, ctx)
    await _send_json(send, answer.body, answer.cache)


async def _parse_vqa(services: Services, raw: bytes) -> VQARequest:
    return await services.parser.parse_vqa(raw)


async def vqa(scope: Scope, receive: Receive, send: Send) -> None:
    services, ctx = services_of(scope), context_of(scope, idempotent=True)
    raw = await _body(scope, receive)
    if raw is None:
        return await _client_gone(send, services, ctx)
    recall = services.pipeline.recall(VQA, raw, partial(_parse_vqa, services, raw))
    parsed = recall.found if recall and recall.found else await _parse_vqa(services, raw)
    await _vqa(receive, send, services, ctx, parsed, recall)


async def _vqa(
    receive: Receive,
    send: Send,
    services: Services,
    ctx: RequestContext,
    parsed: VQARequest | Recalled,
    recall: Recall | None,
) -> None:
    result = await until_disconnect(receive, services.pipeline.vqa(ctx, parsed, recall))
    if result is None:
        return await _client_gone(send, services, ctx)
    answer, cache = result
    await _send_json(send, orjson.dumps(answer.model_dump()), cache)


ENDPOINTS: Final = {CHAT_COMPLETIONS: chat_completions, VQA: vqa}

# -- the OpenAPI operations ---------------------------------------------------------------------

_ERRORS: Final = error_operations(*INFERENCE_ERROR_STATUSES)
_REQUEST_ID_PARAM: Final = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Propagated to the worker and echoed back; generated when absent. One "
    "outside [A-Za-z0-9._:-]{1,128} is replaced, and the answer says X-Request-ID-Replaced: "
    "true.",
    "schema": {"type": "string"},
}
_IDEMPOTENCY_KEY_PARAM: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retry with the same key and body, from the same API key, within "
    "GATEWAY_IDEMPOTENCY_TTL_S, joins the generation still running or gets its stored "
    "answer (X-Cache: idempotent); another body is 409. See docs/IDEMPOTENCY.md.",
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY},
}
# OpenAPI 3.1: a text/event-stream schema describes each event. Its data is a JSON
# chat.completion.chunk, an error body in the one shape, or the final [DONE].
_SSE_EVENT: Final = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "A ChatCompletionChunk, an ErrorResponse, or the final [DONE].",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/ChatCompletionChunk"},
                    {"$ref": "#/components/schemas/ErrorResponse"},
                    {"const": "[DONE]"},
                ]
            },
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(
    summary: str, operation_id: str, body: list[type[Any]], answer: dict[str, Any]
) -> dict[str, Any]:
    schemas = [_ref(model.__name__) for model in body]
    return {
        "tags": ["inference"],
        "summary": summary,
        "operationId": operation_id,
        "parameters": [_REQUEST_ID_PARAM, _IDEMPOTENCY_KEY_PARAM],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
                }
            },
        },
        "responses": {"200": answer, **_ERRORS},
    }


OPERATIONS: Final = {
    CHAT_COMPLETIONS: _operation(
        "Chat completion (OpenAI format), or the simple image+prompt shape",
        "chat_completions_v1_chat_completions_post",
        [ChatCompletionRequest, VQARequest],
        {
            "description": "The completion: JSON, or server-sent events when stream is true. "
            'A body without `messages` is the simple shape and gets `{"text": ...}`.',
            "content": {
                "application/json": {
                    "schema": {"anyOf": [_ref("ChatCompletionResponse"), _ref("VQAResponse")]}
                },
                "text/event-stream": {"schema": _SSE_EVENT},
            },
        },
    ),
    VQA: _operation(
        "The simple shape: one image and a prompt, the answer's text",
        "vqa_v1_vqa_post",
        [VQARequest],
        {
            "description": "The answer.",
            "content": {"application/json": {"schema": _ref("VQAResponse")}},
        },
    ),
}
