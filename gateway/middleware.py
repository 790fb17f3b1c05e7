"""Pure ASGI middleware: metrics, request id, body size and read-time limits.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and the
request body can be counted as it arrives.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BodyReadTimeoutError, BodyTooLargeError, GatewayError, error_headers
from gateway.metrics import Metrics

REQUEST_ID_HEADER: Final = b"x-request-id"
REQUEST_ID_REPLACED_HEADER: Final = b"x-request-id-replaced"
# A caller's id is reused only when it is short and plain: it goes into logs and headers.
# Nginx's map in nginx/nginx.conf.template holds the same pattern.
_VALID_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class MetricsMiddleware:
    """Request count and latency by route template and status, and requests in flight."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before starting a response

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.in_flight.dec()
            # The route template, not the raw path: unknown paths must not create series.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (route, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_duration.labels(*labels).observe(time.perf_counter() - start)


class RequestIdMiddleware:
    """Take X-Request-ID from the caller (or make one), expose it, and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = request_header(scope, REQUEST_ID_HEADER)
        kept = sent is not None and _VALID_REQUEST_ID.fullmatch(sent) is not None
        request_id = sent if kept and sent is not None else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()
        headers = [(REQUEST_ID_HEADER, request_id.encode())]
        if sent is not None and not kept:
            # The caller's id could not be used (Nginx, in front, replaces it the same
            # way and logs both): say so, or the caller looks for its id in vain.
            headers.append((REQUEST_ID_REPLACED_HEADER, b"true"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (``name`` in lower case, as ASGI gives it)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, counting bytes as they arrive, and bodies
    that take longer than ``read_timeout_s`` to arrive with 408.

    A declared Content-Length over the limit is refused before reading anything; a chunked
    body is refused at the chunk that crosses the limit, so at most one chunk past it is
    ever held in memory. The read deadline runs from the first read to the last chunk;
    later reads (the app waiting for a disconnect while it streams) have none.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, read_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send, BodyTooLargeError(self.limit))
            return
        received = 0
        started = False
        body_done = False
        deadline: float | None = None

        async def limited_receive() -> Message:
            nonlocal received, body_done, deadline
            if body_done:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.read_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeoutError(self.read_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except (BodyTooLargeError, BodyReadTimeoutError) as error:
            # Normally the app's error handler answers; this covers reads outside a route.
            if started:
                raise
            await self._refuse(send, error)

    async def _refuse(self, send: Send, error: GatewayError) -> None:
        self.metrics.errors.labels(error.code.value).inc()
        body = error.body()
        headers = [*error_headers(error), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
