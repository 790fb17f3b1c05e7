"""One interaction record per inference request, whatever happens to it.

The middleware wraps the inference routes from outside the body limit, so 413s,
415s and validation errors are recorded too. It opens an InteractionDraft in the
request state; the pipeline fills in what it learns (model, prompt, images, cache
outcome, answer, tokens, worker); when the response's last byte is sent (or the
client is gone) the middleware turns the draft into an InteractionRecord and
hands it to the writer, which never blocks.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.db.models import REQUEST_ID_BYTES
from gateway.errors import ERROR_TABLE, ErrorCode
from gateway.interactions.draft import CLIENT_GONE, STATE_KEY, InteractionDraft
from gateway.interactions.records import InteractionRecord, Shape
from gateway.interactions.writer import InteractionWriter
from gateway.metrics import Metrics
from gateway.middleware import request_header

LOGGED_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/vqa", "/v1/match"})
_SHAPES: Final[dict[str, Shape]] = {"/v1/vqa": "vqa", "/v1/match": "match"}
# Nginx's status for "the client closed the connection first" (routes answer it too).
CLIENT_CLOSED: Final = 499
# Error bodies are small; a larger body is an answer, not an error, and is not parsed.
_ERROR_BODY_LIMIT: Final = 16 * 1024


def client_ip(scope: Scope, trusted: Sequence[IPv4Network | IPv6Network]) -> str | None:
    """The client's address: the peer's, or X-Real-IP when the peer is a trusted proxy
    (behind our Nginx the peer is Nginx itself; it passes the client in X-Real-IP)."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    real = request_header(scope, b"x-real-ip")
    if real and peer is not None and _is_trusted(peer, trusted):
        return real
    return peer


def _is_trusted(peer: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


class RecordSink:
    """Where the middleware's records go: the writer, once the lifespan has started it.

    Middleware is built before the lifespan runs, so it holds this sink rather than the
    writer itself. Requests are only served once the lifespan has attached it.
    """

    def __init__(self) -> None:
        self.writer: InteractionWriter | None = None

    def submit(self, record: InteractionRecord) -> None:
        if self.writer is not None:
            self.writer.submit(record)


class InteractionLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        sink: RecordSink,
        metrics: Metrics | None = None,
        trusted_proxies: Sequence[IPv4Network | IPv6Network] = (),
    ) -> None:
        self.app = app
        self.sink = sink
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies  # peers whose X-Real-IP is believed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in LOGGED_PATHS:
            await self.app(scope, receive, send)
            return
        received_ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        draft = InteractionDraft(shape=_SHAPES.get(scope["path"], "chat"))
        scope.setdefault("state", {})[STATE_KEY] = draft
        status = 500
        error_body = bytearray()
        finished = False

        async def observed_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                if status >= 400 and len(error_body) < _ERROR_BODY_LIMIT:
                    error_body.extend(message.get("body", b""))
                finished = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if status >= 400:
                _note_error_body(draft, bytes(error_body))
            elif not finished:
                draft.fail("client_error", CLIENT_GONE)
            self.sink.submit(self._record(scope, draft, draft.status or status, received_ms))
            if self.metrics is not None:
                self._observe(scope["path"], draft, status, finished, started)

    def _observe(
        self, route: str, draft: InteractionDraft, status: int, finished: bool, started: float
    ) -> None:
        # The one place that knows how the answer ended and its cache outcome.
        assert self.metrics is not None
        elapsed = time.perf_counter() - started
        cache = draft.cache or "none"
        self.metrics.inference_duration.labels(route, cache).observe(elapsed)
        result = outcome(status, finished, draft.error_code)
        self.metrics.inference_outcomes.labels(route, result).inc()
        if result == "ok" and not draft.stream:
            self.metrics.answer_seconds.labels(route, cache).observe(elapsed)

    def _record(
        self, scope: Scope, draft: InteractionDraft, status: int, received_ms: int
    ) -> InteractionRecord:
        state = scope.get("state", {})
        return InteractionRecord(
            request_id=log_key(str(state.get("request_id", ""))),
            received_at_ms=received_ms,
            finished_at_ms=time.time_ns() // 1_000_000,
            endpoint=scope["path"],
            shape=draft.shape,
            status_code=status,
            stream=draft.stream,
            ttft_ms=draft.ttft_ms,
            client_ip=client_ip(scope, self.trusted_proxies),
            user_agent=request_header(scope, b"user-agent"),
            model=draft.model,
            prompt=draft.prompt,
            images=draft.images,
            answer=draft.answer,
            cache=draft.cache,
            cache_source=draft.cache_source,
            cache_distance=draft.cache_distance,
            error_type=draft.error_type,
            error_code=draft.error_code,
            worker_id=draft.worker_id,
            pool=draft.pool,
            prompt_tokens=draft.prompt_tokens,
            completion_tokens=draft.completion_tokens,
            moderation=draft.moderation,
            api_key_id=draft.api_key_id,
            upstream_attempts=draft.upstream_attempts,
            response_format=draft.response_format,
            schema_name=draft.schema_name,
            schema_sha256=draft.schema_sha256,
            end_user_sha256=draft.end_user_sha256,
            request_metadata=draft.request_metadata,
            request_options=draft.request_options,
            tool_calls=draft.tool_calls,
            batch_id=draft.batch_id,
        )


def outcome(status: int, finished: bool, error_code: str | None) -> str:
    """How a request ended for its client (gateway.metrics.INFERENCE_OUTCOMES): a stream is
    judged by its end, not by the 200 that began it."""
    if status == CLIENT_CLOSED or error_code == CLIENT_GONE or (status < 400 and not finished):
        return "abandoned"
    if status >= 500:
        return "failed"
    if status >= 400:
        return "rejected"
    if error_code is None:
        return "ok"
    try:  # an error event after the 200: the status its code would have had
        failed = ERROR_TABLE[ErrorCode(error_code)].status >= 500
    except ValueError:
        failed = True
    return "failed" if failed else "rejected"


def log_key(request_id: str) -> str:
    """The row's unique key: the propagated request id plus a random suffix.

    Callers choose X-Request-ID and may reuse it (a retry of the same question is a
    second interaction); the log's key is unique, so reuse would merge two rows into
    one. On-call finds a request's rows by prefix: WHERE request_id LIKE 'ID.%'.
    """
    # 128 random bits: a collision is out of reach (with 32 bits, about 116 rows per
    # million requests that reuse one id were merged into others without an error).
    return f"{request_id[: REQUEST_ID_BYTES - 33]}.{secrets.token_hex(16)}"


def _note_error_body(draft: InteractionDraft, body: bytes) -> None:
    try:
        error = json.loads(body)["error"]
        draft.fail(str(error.get("type")), str(error.get("code")))
    except (ValueError, KeyError, TypeError, AttributeError):
        draft.fail("unknown", "unparsed_error")
