"""Batch lines on the gateway: the marker the runner sends, trusted only with its token.

The runner sends every line through the gateway's own API, so a line meets exactly what an
online request meets (validation, moderation, the answer cache, coalescing, the worker
pool, the interaction log). Three headers make a request a batch line::

    X-VLM-Batch-Token  the runner's shared secret (GATEWAY_BATCH_RUNNER_TOKEN)
    X-VLM-Batch-Id     the batch, written on the line's interaction row
    X-VLM-Batch-Key    the batch owner's API key id ("" when keys are off)

With the right token the request is a :class:`BatchLine`: admission takes the owner's key
(its model permissions) without charging the key's online limits or concurrency (the
runner paces batches itself), and the worker body carries vLLM's ``priority`` so a worker
serves shoppers first. A request that names a batch without the token gets 401: nobody
else can borrow another key's identity or the low-priority lane.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ErrorCode, GatewayError, error_response
from gateway.interactions.draft import draft_of
from gateway.metrics import Metrics
from gateway.middleware import request_header

STATE_KEY: Final = "batch_line"
TOKEN_HEADER: Final = "x-vlm-batch-token"
BATCH_HEADER: Final = "x-vlm-batch-id"
KEY_HEADER: Final = "x-vlm-batch-key"
_BATCH_ID: Final = re.compile(r"batch_[0-9a-f]{32}")
_KEY_ID: Final = re.compile(r"[0-9a-f]{16}|")


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A request the runner sent for a batch: whose, and at which vLLM priority."""

    batch_id: str
    key_id: str | None  # None: the batch was created with keys off
    priority: int


def batch_line_of(state: object) -> BatchLine | None:
    value = state.get(STATE_KEY) if isinstance(state, dict) else getattr(state, STATE_KEY, None)
    return value if isinstance(value, BatchLine) else None


def with_priority(body: bytes, priority: int | None) -> bytes:
    """The worker body (a JSON object the gateway encoded) with vLLM's ``priority``: no
    client field can carry it (the request schema refuses unknown fields), so the key is
    new, and splicing it in front costs one copy rather than a parse."""
    if priority is None or not body.startswith(b"{"):
        return body
    return b'{"priority":%d,' % priority + body[1:] if body != b"{}" else body


class BatchLineMiddleware:
    """Recognises batch lines (between the interaction log and admission)."""

    def __init__(
        self, app: ASGIApp, token: SecretStr | None, priority: int, metrics: Metrics
    ) -> None:
        self.app = app
        self._token = token.get_secret_value().encode() if token is not None else None
        self._priority = priority
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batch_id = request_header(scope, BATCH_HEADER.encode()) if scope["type"] == "http" else None
        if batch_id is None:
            await self.app(scope, receive, send)
            return
        key_id = request_header(scope, KEY_HEADER.encode()) or ""
        token = (request_header(scope, TOKEN_HEADER.encode()) or "").encode("latin-1")
        trusted = self._token is not None and hmac.compare_digest(token, self._token)
        if not trusted or not _BATCH_ID.fullmatch(batch_id) or not _KEY_ID.fullmatch(key_id):
            error = GatewayError(
                ErrorCode.INVALID_API_KEY, "Batch lines are only accepted from the batch runner."
            )
            self._metrics.errors.labels(error.code.value).inc()
            await error_response(error)(scope, receive, send)
            return
        self._metrics.batch_line_requests.inc()
        state = scope.setdefault("state", {})
        state[STATE_KEY] = BatchLine(batch_id, key_id or None, self._priority)
        draft = draft_of(state)
        if draft is not None:
            draft.batch_id = batch_id
        await self.app(scope, receive, send)
