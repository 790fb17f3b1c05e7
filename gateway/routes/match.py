"""POST /v1/match: does each candidate text describe the photo? A score per text
(gateway/matching/). A plain ASGI endpoint on the inference lane, like routes/chat.py."""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.types import Receive, Scope, Send

from gateway.matching.protocol import MatchRequest
from gateway.matching.stage import MatchCall
from gateway.middleware import request_header
from gateway.routes.chat import _client_gone, _send_json
from gateway.routes.common import (
    INFERENCE_ERROR_STATUSES,
    ClientGone,
    error_operations,
    read_body,
    until_disconnect,
)
from gateway.routes.deps import context_of, services_of
from gateway.validation.parse import check_content_type

MATCH: Final = "/v1/match"


async def match(scope: Scope, receive: Receive, send: Send) -> None:
    services, ctx = services_of(scope), context_of(scope)
    check_content_type(request_header(scope, b"content-type"))
    try:
        raw = await read_body(receive)
    except ClientGone:
        return await _client_gone(send, services, ctx)
    request = await services.parser.parse_model(raw, MatchRequest)
    if services.matcher is None:
        raise RuntimeError("the app's lifespan builds the matcher")
    call = MatchCall(ctx.request_id, ctx.draft, ctx.admission, ctx.directives, ctx.priority)
    result = await until_disconnect(receive, services.matcher.match(call, request))
    if result is None:
        return await _client_gone(send, services, ctx)
    answer, cache = result
    await _send_json(send, orjson.dumps(answer.model_dump()), cache)


ENDPOINTS: Final = {MATCH: match}

_ERRORS: Final = error_operations(*INFERENCE_ERROR_STATUSES)
OPERATIONS: Final[dict[str, dict[str, Any]]] = {
    MATCH: {
        "tags": ["inference"],
        "summary": "Image-text matching: a score per candidate text",
        "operationId": "match_v1_match_post",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/MatchRequest"}}
            },
        },
        "responses": {
            "200": {
                "description": "P(yes) / (P(yes) + P(no)) per text, in the order sent.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/MatchResponse"}}
                },
            },
            **_ERRORS,
        },
    }
}
