"""Error types and the one table that maps each error code to an HTTP status and type.

Every error the gateway returns, as a JSON body or as an SSE error event, is built here
from a :class:`GatewayError`, so status, body shape and code can never drift apart.
Messages are written by us: they never echo the request payload or internal reprs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import Metrics
from gateway.protocol import ErrorDetail, ErrorResponse


class ErrorCode(StrEnum):
    # 400: the request itself is wrong
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    MISSING_MODEL = "missing_model"
    MISSING_MESSAGES = "missing_messages"
    MISSING_PROMPT = "missing_prompt"
    MISSING_IMAGE = "missing_image"
    INVALID_MAX_TOKENS = "invalid_max_tokens"
    INVALID_TEMPERATURE = "invalid_temperature"
    INVALID_TOP_P = "invalid_top_p"
    PROMPT_TOO_LONG = "prompt_too_long"
    TOO_MANY_IMAGES = "too_many_images"
    INVALID_IMAGE_URL = "invalid_image_url"
    REMOTE_IMAGE_URL_UNSUPPORTED = "remote_image_url_unsupported"
    REMOTE_IMAGE_HOST_NOT_ALLOWED = "remote_image_host_not_allowed"
    REMOTE_IMAGE_ADDRESS_BLOCKED = "remote_image_address_blocked"
    REMOTE_IMAGE_FETCH_FAILED = "remote_image_fetch_failed"
    REMOTE_IMAGE_TOO_MANY_REDIRECTS = "remote_image_too_many_redirects"
    REMOTE_IMAGE_TOO_LARGE = "remote_image_too_large"
    REMOTE_IMAGE_TIMEOUT = "remote_image_timeout"
    UNSUPPORTED_IMAGE_TYPE = "unsupported_image_type"
    INVALID_BASE64 = "invalid_base64"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    CONTENT_POLICY_VIOLATION = "content_policy_violation"
    INVALID_JSON_SCHEMA = "invalid_json_schema"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    # other client errors
    MISSING_API_KEY = "missing_api_key"
    INVALID_AUTHORIZATION_SCHEME = "invalid_authorization_scheme"
    INVALID_API_KEY = "invalid_api_key"
    MODEL_NOT_PERMITTED = "model_not_permitted"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    REQUEST_EXCEEDS_TOKEN_LIMIT = "request_exceeds_token_limit"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    BODY_READ_TIMEOUT = "body_read_timeout"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    # the worker said no: its own 4xx status, passed through in our shape
    UPSTREAM_REJECTED = "upstream_rejected"
    # the workers could not answer
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    NO_HEALTHY_WORKER = "no_healthy_worker"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    OVERLOADED = "overloaded"
    AUTH_UNAVAILABLE = "auth_unavailable"
    RATE_LIMITER_UNAVAILABLE = "rate_limiter_unavailable"
    MODERATION_UNAVAILABLE = "moderation_unavailable"
    BATCH_STORE_UNAVAILABLE = "batch_store_unavailable"
    BATCH_EXPIRED = "batch_expired"
    DRAINING = "draining"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    type: str
    # Answers carry Retry-After (seconds, GATEWAY_RETRY_AFTER_S): the condition is passing.
    retry_after: bool = False
    # Fixed headers every answer of this kind carries (WWW-Authenticate on 401s).
    headers: tuple[tuple[str, str], ...] = ()


_INVALID = "invalid_request_error"
_UPSTREAM = "upstream_error"
_AUTHENTICATION = "authentication_error"
_BEARER: Final = (("WWW-Authenticate", "Bearer"),)
_NEVER: Final = (("x-should-retry", "false"),)

# The one table. UPSTREAM_REJECTED's status is a default: the worker's own 4xx replaces it.
ERROR_TABLE: Final[dict[ErrorCode, ErrorKind]] = {
    ErrorCode.INVALID_JSON: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_REQUEST: ErrorKind(400, _INVALID),
    ErrorCode.UNSUPPORTED_PARAMETER: ErrorKind(400, _INVALID),
    ErrorCode.MISSING_MODEL: ErrorKind(400, _INVALID),
    ErrorCode.MISSING_MESSAGES: ErrorKind(400, _INVALID),
    ErrorCode.MISSING_PROMPT: ErrorKind(400, _INVALID),
    ErrorCode.MISSING_IMAGE: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_MAX_TOKENS: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_TEMPERATURE: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_TOP_P: ErrorKind(400, _INVALID),
    ErrorCode.PROMPT_TOO_LONG: ErrorKind(400, _INVALID),
    ErrorCode.TOO_MANY_IMAGES: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_IMAGE_URL: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_URL_UNSUPPORTED: ErrorKind(400, _INVALID),
    # A remote image's failures are the URL's: the caller chose the server (as OpenAI
    # answers 400 to an image it could not download), so none is a 5xx of ours.
    ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_FETCH_FAILED: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_TOO_MANY_REDIRECTS: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_TOO_LARGE: ErrorKind(400, _INVALID),
    ErrorCode.REMOTE_IMAGE_TIMEOUT: ErrorKind(400, _INVALID),
    ErrorCode.UNSUPPORTED_IMAGE_TYPE: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_BASE64: ErrorKind(400, _INVALID),
    ErrorCode.INVALID_IMAGE: ErrorKind(400, _INVALID),
    ErrorCode.IMAGE_TOO_LARGE: ErrorKind(400, _INVALID),
    # A prompt, image or answer the content policy refuses (gateway/moderation/).
    ErrorCode.CONTENT_POLICY_VIOLATION: ErrorKind(400, _INVALID),
    # A response_format or tool schema over our bounds (gateway/validation/schema_bounds.py).
    ErrorCode.INVALID_JSON_SCHEMA: ErrorKind(400, _INVALID),
    # The Idempotency-Key header is malformed (gateway/cache/idempotency.py).
    ErrorCode.INVALID_IDEMPOTENCY_KEY: ErrorKind(400, _INVALID),
    # The worker found the prompt (text and image tokens) longer than its context: OpenAI's code.
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: ErrorKind(400, _INVALID),
    # 401: no usable key (missing, malformed, unknown, revoked); 403: a valid key asked
    # for a model it may not use; 429: over one of the key's limits.
    ErrorCode.MISSING_API_KEY: ErrorKind(401, _AUTHENTICATION, headers=_BEARER),
    # An Authorization header in another scheme than Bearer ("Token <key>", "Basic ...").
    ErrorCode.INVALID_AUTHORIZATION_SCHEME: ErrorKind(401, _AUTHENTICATION, headers=_BEARER),
    ErrorCode.INVALID_API_KEY: ErrorKind(401, _AUTHENTICATION, headers=_BEARER),
    ErrorCode.MODEL_NOT_PERMITTED: ErrorKind(403, "permission_error"),
    ErrorCode.RATE_LIMIT_EXCEEDED: ErrorKind(429, "rate_limit_error", retry_after=True),
    # One request estimated over the key's whole tokens per minute: waiting never helps,
    # and x-should-retry: false tells the official openai SDKs so (they obey it over the
    # status, which they would otherwise retry).
    ErrorCode.REQUEST_EXCEEDS_TOKEN_LIMIT: ErrorKind(429, "rate_limit_error", headers=_NEVER),
    ErrorCode.MODEL_NOT_FOUND: ErrorKind(404, _INVALID),
    ErrorCode.NOT_FOUND: ErrorKind(404, _INVALID),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorKind(405, _INVALID),
    ErrorCode.BODY_TOO_LARGE: ErrorKind(413, _INVALID),
    # The body did not arrive within body_read_timeout_s (a trickling or stalled client).
    ErrorCode.BODY_READ_TIMEOUT: ErrorKind(408, _INVALID),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorKind(415, _INVALID),
    # An Idempotency-Key already bound to another body, within its window.
    ErrorCode.IDEMPOTENCY_KEY_REUSED: ErrorKind(409, _INVALID),
    ErrorCode.UPSTREAM_REJECTED: ErrorKind(400, _INVALID),
    ErrorCode.UPSTREAM_ERROR: ErrorKind(502, _UPSTREAM),
    ErrorCode.UPSTREAM_UNAVAILABLE: ErrorKind(503, _UPSTREAM, retry_after=True),
    ErrorCode.NO_HEALTHY_WORKER: ErrorKind(503, _UPSTREAM, retry_after=True),
    ErrorCode.UPSTREAM_TIMEOUT: ErrorKind(504, _UPSTREAM),
    ErrorCode.OVERLOADED: ErrorKind(503, _UPSTREAM, retry_after=True),
    # The key store could not check a key new to it (MariaDB down), or the rate limiter's
    # Redis is down and GATEWAY_RATELIMIT_FAIL_OPEN is false.
    ErrorCode.AUTH_UNAVAILABLE: ErrorKind(503, "server_error", retry_after=True),
    ErrorCode.RATE_LIMITER_UNAVAILABLE: ErrorKind(503, "server_error", retry_after=True),
    # The image check failed and GATEWAY_MODERATION_IMAGE_CHECK_FAIL_CLOSED is true.
    ErrorCode.MODERATION_UNAVAILABLE: ErrorKind(503, "server_error", retry_after=True),
    # The database of files and batches (gateway/batch/) cannot be reached.
    ErrorCode.BATCH_STORE_UNAVAILABLE: ErrorKind(503, "server_error", retry_after=True),
    # A batch line not done within its batch's completion window (its error file's code).
    ErrorCode.BATCH_EXPIRED: ErrorKind(503, "server_error"),
    ErrorCode.DRAINING: ErrorKind(503, "server_error", retry_after=True),
    ErrorCode.INTERNAL_ERROR: ErrorKind(500, "server_error"),
}


class GatewayError(Exception):
    """An error with a code from the table; ``param`` names the offending field."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        upstream_status: int | None = None,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        kind = ERROR_TABLE[code]
        if code is ErrorCode.UPSTREAM_REJECTED and upstream_status is not None:
            self.status = upstream_status
        else:
            self.status = kind.status
        self.type = kind.type
        self.retry_after = kind.retry_after
        self.retry_after_s = retry_after_s
        self.headers = kind.headers

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code.value
            )
        )

    def body(self) -> bytes:
        return self.to_response().model_dump_json().encode()

    def sse_event(self) -> bytes:
        """The same body as an SSE event, for errors after a stream has started."""
        return b"data: " + self.body() + b"\n\n"


class BodyReadTimeoutError(GatewayError):
    def __init__(self, limit_s: float) -> None:
        super().__init__(
            ErrorCode.BODY_READ_TIMEOUT, f"The request body did not arrive within {limit_s:g} s."
        )


class BodyTooLargeError(GatewayError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            ErrorCode.BODY_TOO_LARGE, f"Request body exceeds the limit of {limit} bytes."
        )


def error_headers(error: GatewayError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if error.retry_after:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers]
    if error.status == 413:
        # The client may still be sending: close rather than drain a body we refused.
        headers.append((b"connection", b"close"))
    return headers


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    response = Response(error.body(), status_code=error.status, headers=headers)
    for name, value in error_headers(error):
        response.headers[name.decode()] = value.decode()
    return response


_HTTP_CODES: Final = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}
_HTTP_MESSAGES: Final = {404: "Not found.", 405: "Method not allowed."}


log = logging.getLogger("gateway")


def _internal() -> GatewayError:
    return GatewayError(ErrorCode.INTERNAL_ERROR, "Internal error.")


class ErrorBoundary:
    """For a plain ASGI endpoint, what the handlers below do for FastAPI's routes: an
    exception raised before the response has started becomes the one error body (a
    500 for anything but a GatewayError), counted by code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            if started:
                raise
            if isinstance(exc, GatewayError):
                error = exc
            else:
                log.exception("unexpected error in %s", scope.get("path"))
                error = _internal()
            self.metrics.errors.labels(error.code.value).inc()
            await error_response(error)(scope, receive, send)


def _missing_v1(request: Request) -> str | None:
    """For a path that exists under /v1 (a base URL without /v1: POST /chat/completions),
    the message that says so. The path is named only when it is one of our routes'."""
    path = request.url.path
    if path.startswith("/v1/"):
        return None
    scope = {**request.scope, "path": "/v1" + path}
    if any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return (
            f"Not found: this API's paths start with /v1; use /v1{path} (an SDK's base URL "
            "ends in /v1)."
        )
    return None


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Render every exception as the one error body, and count it by code."""

    def render(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
        metrics.errors.labels(error.code.value).inc()
        return error_response(error, headers)

    async def gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return render(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 (unknown path, wrong method), keeping its Allow header.
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code)
        if code is None:
            code = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
        message = _HTTP_MESSAGES.get(exc.status_code, "Request failed.")
        if exc.status_code == 404:
            message = _missing_v1(request) or message
        error = GatewayError(code, message)
        response = render(error, dict(exc.headers or {}))
        response.status_code = exc.status_code
        return response

    async def validation_error(_: Request, exc: Exception) -> Response:
        # Routes parse bodies themselves; this only guards a future declared parameter.
        return render(GatewayError(ErrorCode.INVALID_REQUEST, "Invalid request."))

    async def unexpected_error(_: Request, exc: Exception) -> Response:
        return render(_internal())

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
