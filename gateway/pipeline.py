"""The way of one request through the stages, shared by both API shapes.

    authenticate -> rate-limit -> validate -> moderate -> cache? -> coalesce? -> forward
    -> store in cache -> interaction log

Auth, rate limits and moderation belong to their own issue; their places are marked
``STAGE:``. The interaction log's record is written by InteractionLogMiddleware from
the draft each stage fills in (ctx.draft).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.cache import CachedAnswer, CacheDirectives
from gateway.caching import BYPASS, NO_CACHE, CachePlan, CacheStage, Lookup, answer_from_completion
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.interaction_log import InteractionDraft
from gateway.metrics import Metrics
from gateway.pool import WorkerPool
from gateway.protocol import (
    ChatCompletionRequest,
    TextPart,
    VQARequest,
    VQAResponse,
)
from gateway.replay import completion_json, completion_sse
from gateway.streams import ChunkStream, RecordingStream, ReplayStream
from gateway.upstream import Upstream
from gateway.validation import PreparedRequest, prepare_chat, prepare_vqa

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every stage may know about the request besides its body."""

    request_id: str
    route: str
    started: float  # time.perf_counter() when the request arrived
    directives: CacheDirectives = field(default_factory=CacheDirectives)
    # Filled in by the stages; the interaction log writes it when the response ends.
    draft: InteractionDraft = field(default_factory=InteractionDraft)
    # STAGE auth: the authenticated API key / tenant will be added here.


@dataclass(frozen=True, slots=True)
class Answer:
    """A non-streamed answer and how the cache took part in it."""

    body: bytes
    cache: str


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    stream: ChunkStream
    cache: str


def _chat_prompt(request: ChatCompletionRequest) -> str:
    texts: list[str] = []
    for message in request.messages:
        if isinstance(message.content, str):
            texts.append(message.content)
        else:
            texts += [part.text for part in message.content if isinstance(part, TextPart)]
    return "\n".join(texts)


def _affinity_key(prepared: PreparedRequest) -> str | None:
    """The first image's digest: repeats of a photo go where its features are cached."""
    return prepared.images[0].sha256 if prepared.images else None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        pool: WorkerPool,
        upstream: Upstream,
        metrics: Metrics,
        cache: CacheStage | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics
        self._cache = cache

    # -- entry points, one per answer form ----------------------------------------------------

    async def chat(self, ctx: RequestContext, request: ChatCompletionRequest) -> Answer:
        """A non-streamed chat completion: the worker's JSON body, or a replayed one."""
        await self._admit(ctx)
        self._note_request(ctx, request.model, _chat_prompt(request), stream=False)
        prepared = await prepare_chat(request, self._settings, self._pool.model_ids())
        ctx.draft.images = prepared.images
        answer, cache = await self._answer(ctx, prepared)
        return Answer(answer, cache)

    async def chat_stream(
        self, ctx: RequestContext, request: ChatCompletionRequest
    ) -> StreamedAnswer:
        """A streamed chat completion; returns once the worker's first chunk is in."""
        await self._admit(ctx)
        self._note_request(ctx, request.model, _chat_prompt(request), stream=True)
        prepared = await prepare_chat(request, self._settings, self._pool.model_ids())
        ctx.draft.images = prepared.images
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared)
        if lookup.answer is not None:
            self._note_answer(ctx, lookup.answer)
            events = completion_sse(lookup.answer, prepared.model, prepared.client_wants_usage)
            return StreamedAnswer(ReplayStream(events), lookup.outcome)
        try:
            upstream = await self._upstream.open_stream(
                CHAT_PATH,
                prepared.body,
                ctx.request_id,
                self._note_worker(ctx),
                affinity_key=_affinity_key(prepared),
            )
        except BaseException:
            await self._complete(plan, lookup, None)
            raise
        self._metrics.ttft.labels(ctx.route).observe(time.perf_counter() - ctx.started)
        ctx.draft.ttft_ms = (time.perf_counter() - ctx.started) * 1000

        async def on_end(answer: CachedAnswer | None) -> None:
            if answer is not None:
                self._note_answer(ctx, answer)
            await self._complete(plan, lookup, answer)

        stream = RecordingStream(upstream, prepared.client_wants_usage, on_end)
        return StreamedAnswer(stream, lookup.outcome)

    async def vqa(self, ctx: RequestContext, request: VQARequest) -> tuple[VQAResponse, str]:
        """The simple shape: one image and a prompt in, the answer's text out."""
        await self._admit(ctx)
        self._note_request(ctx, request.model, request.prompt, stream=False)
        prepared = await prepare_vqa(request, self._settings, self._pool.model_ids())
        ctx.draft.model = prepared.model
        ctx.draft.images = prepared.images
        body, cache = await self._answer(ctx, prepared)
        answer = answer_from_completion(body)
        if answer is None:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's answer was malformed.")
        return VQAResponse(text=answer.content), cache

    # -- stages -------------------------------------------------------------------------------

    async def _admit(self, ctx: RequestContext) -> None:
        """Who may ask, and how often."""
        # STAGE auth: check the API key (gateway/auth.py) and record it in the context.
        # STAGE rate-limit: Redis token bucket per key (gateway/auth.py); 429 when empty.

    async def _moderate(self, ctx: RequestContext, prepared: PreparedRequest) -> None:
        """Content policy on prompt and images."""
        # STAGE moderate: gateway/moderation.py; answers are moderated after forwarding,
        # and a blocked answer is never offered to the cache.

    async def _lookup(
        self, ctx: RequestContext, prepared: PreparedRequest
    ) -> tuple[CachePlan, Lookup]:
        if self._cache is None:
            plan, lookup = NO_CACHE, Lookup(BYPASS)
            self._metrics.cache_requests.labels("bypass").inc()
        else:
            plan = self._cache.plan(prepared, ctx.directives)
            lookup = await self._cache.lookup(plan)
        ctx.draft.cache = lookup.outcome
        return plan, lookup

    async def _complete(self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None) -> None:
        if self._cache is not None:
            await self._cache.complete(plan, lookup, answer)

    async def _answer(self, ctx: RequestContext, prepared: PreparedRequest) -> tuple[bytes, str]:
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared)
        if lookup.answer is not None:
            self._note_answer(ctx, lookup.answer)
            return completion_json(lookup.answer, prepared.model), lookup.outcome
        try:
            body = await self._upstream.post_json(
                CHAT_PATH,
                prepared.body,
                ctx.request_id,
                self._note_worker(ctx),
                affinity_key=_affinity_key(prepared),
            )
        except BaseException:
            await self._complete(plan, lookup, None)
            raise
        answer = answer_from_completion(body)
        if answer is not None:
            self._note_answer(ctx, answer)
        await self._complete(plan, lookup, answer)
        return body, lookup.outcome

    # -- the interaction draft ----------------------------------------------------------------

    @staticmethod
    def _note_request(ctx: RequestContext, model: str | None, prompt: str, stream: bool) -> None:
        ctx.draft.model, ctx.draft.prompt, ctx.draft.stream = model, prompt, stream

    @staticmethod
    def _note_answer(ctx: RequestContext, answer: CachedAnswer) -> None:
        draft = ctx.draft
        draft.answer = answer.content
        draft.prompt_tokens, draft.completion_tokens = (
            answer.prompt_tokens,
            answer.completion_tokens,
        )

    @staticmethod
    def _note_worker(ctx: RequestContext) -> Callable[[str], None]:
        def note(worker_url: str) -> None:
            ctx.draft.worker_id = worker_url

        return note
