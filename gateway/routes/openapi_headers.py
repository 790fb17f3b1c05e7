"""The OpenAPI document's responses as the server sends them: the headers each carries,
and no error body but ours.

FastAPI documents a 422 with its own validation body on every route with parameters; our
handlers answer those with a 400 in our shape (gateway/errors.py): the document says so.
"""

from __future__ import annotations

from typing import Any, Final

_HEADER_DOCS: Final = {
    "X-Request-ID": "The request's id: the caller's when it matched [A-Za-z0-9._:-]{1,128}, "
    "else a new one. Quote it when reporting a problem.",
    "X-Request-ID-Replaced": "'true' when the caller's X-Request-ID was not usable and "
    "X-Request-ID holds a new one instead.",
    "X-Cache": "hit, miss, coalesced or bypass: how the answer cache took part.",
    "Retry-After": "Seconds to wait before retrying.",
    "x-should-retry": "'false' when the same request can never succeed (it exceeds the "
    "key's whole tokens per minute); the official openai SDKs obey it.",
    "WWW-Authenticate": "Bearer: send the key as 'Authorization: Bearer <key>'.",
    **{
        f"x-ratelimit-{name}-{kind}": f"The API key's {kind} per minute: {what}."
        for kind in ("requests", "tokens")
        for name, what in (
            ("limit", "its limit"),
            ("remaining", "what is left in the current window"),
            ("reset", "time until the window has room again, e.g. 1s or 6m0s"),
        )
    },
}
_INTEGER_HEADERS: Final = frozenset(
    {"Retry-After", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"}
    | {"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"}
)
_LIMIT_HEADERS: Final = tuple(name for name in _HEADER_DOCS if name.startswith("x-ratelimit"))
_INFERENCE: Final = frozenset({"/v1/chat/completions", "/v1/vqa", "/v1/match"})


# What the server answers instead of FastAPI's 422 (gateway/errors.py, validation_error).
_BAD_PARAMETER: Final = {
    "description": "Invalid request (a path or query parameter; see error.code).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _header(name: str) -> dict[str, Any]:
    kind = "integer" if name in _INTEGER_HEADERS else "string"
    return {"description": _HEADER_DOCS[name], "schema": {"type": kind}}


def _headers_of(path: str, status: str, limits: bool) -> list[str]:
    names = ["X-Request-ID", "X-Request-ID-Replaced"]
    if path in _INFERENCE and status == "200":
        names.append("X-Cache")
    if limits and path.startswith("/v1/") and status != "401":
        names += _LIMIT_HEADERS  # every answer to a known key says where it stands
    if status in ("429", "503"):
        names.append("Retry-After")
    if status == "429":
        names.append("x-should-retry")
    if status == "401":
        names.append("WWW-Authenticate")
    return names


def describe_responses(schema: dict[str, Any], *, limits: bool) -> None:
    """Headers on every response; FastAPI's 422 and its validation schemas removed."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses: dict[str, Any] = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = _BAD_PARAMETER
            for status, response in responses.items():
                names = _headers_of(path, status, limits)
                response["headers"] = {name: _header(name) for name in names}
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
