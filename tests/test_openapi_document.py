"""The OpenAPI document matches the server (issue 27): its bounds are the settings', the
inference routes document every error status of the error table in our one error shape,
and the headers a client reads (x-request-id, x-cache, x-ratelimit-*, Retry-After) and
the stream's chunk schema are described."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.config import Settings
from gateway.errors import ERROR_TABLE

INFERENCE = ("/v1/chat/completions", "/v1/vqa", "/v1/match")
# Not the defaults, so a bound copied from anywhere but the settings shows.
LIMITS: dict[str, Any] = {
    "max_choices": 3,
    "max_tokens_cap": 1000,
    "max_messages": 50,
    "max_content_parts": 12,
    "max_tools": 9,
}


def _document(**settings: Any) -> dict[str, Any]:
    document: dict[str, Any] = create_app(Settings(**settings)).openapi()
    return document


def _options(prop: dict[str, Any]) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = prop.get("anyOf", [prop])
    return options


def _bound(prop: dict[str, Any], keyword: str) -> Any:
    found = [option[keyword] for option in _options(prop) if keyword in option]
    assert len(found) == 1, prop
    return found[0]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return _document(**LIMITS)


def test_the_bounds_are_the_settings(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert _bound(chat["n"], "maximum") == LIMITS["max_choices"]
    assert _bound(chat["max_tokens"], "maximum") == LIMITS["max_tokens_cap"]
    assert _bound(chat["max_completion_tokens"], "maximum") == LIMITS["max_tokens_cap"]
    assert _bound(schemas["VQARequest"]["properties"]["max_tokens"], "maximum") == 1000
    assert chat["messages"]["maxItems"] == LIMITS["max_messages"]
    assert _bound(chat["tools"], "maxItems") == LIMITS["max_tools"]
    content = schemas["ChatMessage"]["properties"]["content"]
    assert _bound(content, "maxItems") == LIMITS["max_content_parts"]
    roles = schemas["ChatMessage"]["properties"]["role"]["enum"]
    assert "developer" in roles


def test_inference_routes_document_every_status_of_the_error_table(
    document: dict[str, Any],
) -> None:
    # 405 is a wrong method on the path, not an answer of the POST operation.
    statuses = {str(kind.status) for kind in ERROR_TABLE.values()} - {"405"}
    for path in INFERENCE:
        responses = document["paths"][path]["post"]["responses"]
        documented = {status for status in responses if status[0] in "45"}
        assert statuses <= documented, (path, statuses - documented)
        # The worker's own 4xx comes through too (upstream_rejected).
        assert "4XX" in documented


def test_every_error_response_is_our_error_shape(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45":
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (
                    path,
                    method,
                    status,
                )
                assert "x-request-id" in {h.lower() for h in response["headers"]}, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def _headers(response: dict[str, Any]) -> set[str]:
    return {name.lower() for name in response.get("headers", {})}


def test_the_response_headers_are_described() -> None:
    auth = AuthSettings(enabled=True, database_url=SecretStr("mysql+asyncmy://u:p@h/db"))
    document = _document(auth=auth)
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"x-request-id", "x-cache", "x-ratelimit-remaining-tokens"} <= _headers(chat["200"])
    assert {"retry-after", "x-should-retry", "x-ratelimit-limit-requests"} <= _headers(chat["429"])
    assert "retry-after" in _headers(chat["503"])
    assert "www-authenticate" in _headers(chat["401"])
    models = document["paths"]["/v1/models"]["get"]["responses"]
    assert "x-ratelimit-limit-requests" in _headers(models["200"])
    # Keys off: no limits, no x-ratelimit-* headers.
    keyless = _document(auth=AuthSettings(enabled=False))
    assert not any(
        name.startswith("x-ratelimit")
        for name in _headers(keyless["paths"]["/v1/chat/completions"]["post"]["responses"]["200"])
    )


def test_the_stream_is_described_chunk_by_chunk(document: dict[str, Any]) -> None:
    answer = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    event = answer["content"]["text/event-stream"]["schema"]
    data = event["properties"]["data"]["contentSchema"]["anyOf"]
    assert {"$ref": "#/components/schemas/ChatCompletionChunk"} in data
    chunk = document["components"]["schemas"]["ChatCompletionChunk"]
    assert chunk["properties"]["object"]["const"] == "chat.completion.chunk"
