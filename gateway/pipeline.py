"""The way of one request through the stages, shared by both API shapes.

    authenticate -> rate-limit -> validate -> moderate -> cache? -> coalesce? -> forward
    -> store in cache -> interaction log

Only validation and forwarding exist yet. The other stages belong to their own issues;
each has its marked place below (``STAGE:``) and the data it needs is already at hand
there: the request context (id, route, arrival time) and the PreparedRequest (model,
forwarded body, image digests, prompt size).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import ValidationError

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.protocol import ChatCompletionRequest, ChatCompletionResponse, VQARequest, VQAResponse
from gateway.upstream import Upstream, UpstreamStream, WorkerPool
from gateway.validation import PreparedRequest, prepare_chat, prepare_vqa

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every stage may know about the request besides its body."""

    request_id: str
    route: str
    started: float  # time.perf_counter() when the request arrived
    # STAGE auth: the authenticated API key / tenant will be added here.


class Pipeline:
    def __init__(
        self, settings: Settings, pool: WorkerPool, upstream: Upstream, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics

    # -- entry points, one per answer form ----------------------------------------------------

    async def chat(self, ctx: RequestContext, request: ChatCompletionRequest) -> bytes:
        """A non-streamed chat completion: the worker's JSON body, forwarded as is."""
        await self._admit(ctx)
        prepared = await prepare_chat(request, self._settings, self._pool.model_ids())
        return await self._answer(ctx, prepared)

    async def chat_stream(
        self, ctx: RequestContext, request: ChatCompletionRequest
    ) -> UpstreamStream:
        """A streamed chat completion; returns once the worker's first chunk is in."""
        await self._admit(ctx)
        prepared = await prepare_chat(request, self._settings, self._pool.model_ids())
        await self._moderate(ctx, prepared)
        # STAGE cache: on a hit, replay the stored answer as SSE chunks instead of forwarding.
        # STAGE coalesce: join an identical in-flight request and replay its chunks.
        stream = await self._upstream.open_stream(CHAT_PATH, prepared.body, ctx.request_id)
        self._metrics.ttft.labels(ctx.route).observe(time.perf_counter() - ctx.started)
        # STAGE cache store / interaction log: wrap `stream` to see the chunks as they pass,
        # and act when it completes (the answer) or is closed early (client gone).
        return stream

    async def vqa(self, ctx: RequestContext, request: VQARequest) -> VQAResponse:
        """The simple shape: one image and a prompt in, the answer's text out."""
        await self._admit(ctx)
        prepared = await prepare_vqa(request, self._settings, self._pool.model_ids())
        body = await self._answer(ctx, prepared)
        try:
            completion = ChatCompletionResponse.model_validate_json(body)
        except ValidationError:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, "The worker's answer was malformed."
            ) from None
        if not completion.choices:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker returned no answer.")
        return VQAResponse(text=completion.choices[0].message.content or "")

    # -- stages -------------------------------------------------------------------------------

    async def _admit(self, ctx: RequestContext) -> None:
        """Who may ask, and how often."""
        # STAGE auth: check the API key (gateway/auth.py) and record it in the context.
        # STAGE rate-limit: Redis token bucket per key (gateway/auth.py); 429 when empty.

    async def _moderate(self, ctx: RequestContext, prepared: PreparedRequest) -> None:
        """Content policy on prompt and images."""
        # STAGE moderate: gateway/moderation.py; answers are moderated after forwarding.

    async def _answer(self, ctx: RequestContext, prepared: PreparedRequest) -> bytes:
        await self._moderate(ctx, prepared)
        # STAGE cache: derive the key from prepared (model, body, image digests); hit -> return.
        # STAGE coalesce: identical request already in flight -> await its answer instead.
        body = await self._upstream.post_json(CHAT_PATH, prepared.body, ctx.request_id)
        # STAGE cache store: keep a cacheable answer.
        # STAGE interaction log: hand (ctx, prepared, body) to the log writer; never await it.
        return body
