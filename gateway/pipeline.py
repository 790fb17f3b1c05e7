"""The way of one request through the stages, shared by both API shapes.

    authenticate -> rate-limit -> validate -> moderate -> cache? -> coalesce? -> forward
    -> store in cache -> interaction log

The API key, requests per minute and concurrency are checked by the admission middleware
before the body is read (gateway/admission.py); the key's allowed models and its tokens
per minute here, once the request is validated (ctx.admission).
Moderation (gateway/moderation/) checks the prompt and images before the cache, and
every answer, fresh or cached, before it is served; a refused answer is never cached,
and a cached one it now refuses is evicted.
The interaction log's record is written by InteractionLogMiddleware from the draft each
stage fills in (ctx.draft).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from gateway.admission import Admission
from gateway.answers import (
    CachedAnswer,
    CompletionSummary,
    answer_from_completion,
    summary_from_completion,
)
from gateway.batch.lane import with_priority
from gateway.cache.replay import completion_json, completion_sse
from gateway.cache.stage import (
    BYPASS,
    NO_CACHE,
    CachePlan,
    CacheStage,
    Lookup,
)
from gateway.cache.store import CacheDirectives
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation import Moderator
from gateway.protocol import (
    ChatCompletionRequest,
    VQARequest,
    VQAResponse,
)
from gateway.ratelimit import estimate_tokens
from gateway.remote_images import RemoteImageFetcher
from gateway.streams import ChunkStream, GapTimer, RecordingStream, ReplayStream
from gateway.upstream.pool import WorkerPool
from gateway.upstream.proxy import Upstream
from gateway.validation.pixels import DecodedImages
from gateway.validation.prepare import PreparedRequest, prepare_chat, prepare_vqa, read_chat

CHAT_PATH = "/v1/chat/completions"

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every stage may know about the request besides its body."""

    request_id: str
    route: str
    started: float  # time.perf_counter() when the request arrived
    directives: CacheDirectives = field(default_factory=CacheDirectives)
    # Filled in by the stages; the interaction log writes it when the response ends.
    draft: InteractionDraft = field(default_factory=InteractionDraft)
    # The API key and its limits (gateway/admission.py); None outside /v1/*.
    admission: Admission | None = None
    # vLLM's priority for the worker body: set for batch lines (gateway/batch/lane.py).
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A non-streamed answer and how the cache took part in it."""

    body: bytes
    cache: str


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    stream: ChunkStream
    cache: str


def _affinity_key(prepared: PreparedRequest) -> str | None:
    """The first image's digest: repeats of a photo go where its features are cached."""
    return prepared.images[0].sha256 if prepared.images else None


def _cache_scope(ctx: RequestContext) -> str | None:
    """The key's id when its cache is its own: X-Cache then tells no key what another
    one asked about the same photo."""
    key = ctx.admission.key if ctx.admission is not None else None
    return key.key_id if key is not None and key.private_cache else None


# Generations that outlive their request (keep_going): referenced until done.
_detached: set[asyncio.Task[Any]] = set()


async def keep_going(
    work: Coroutine[Any, Any, _R], orphan: Callable[[_R], None] | None = None
) -> _R:
    """Await ``work``, which runs to its end even when the caller is cancelled; then its
    result goes to ``orphan`` (an opened stream must still be read or closed)."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if orphan is not None:
            task.add_done_callback(partial(_hand_over, orphan))
        raise


def _hand_over(orphan: Callable[[_R], None], task: asyncio.Future[_R]) -> None:
    if not task.cancelled() and task.exception() is None:
        orphan(task.result())


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        pool: WorkerPool,
        upstream: Upstream,
        metrics: Metrics,
        cache: CacheStage | None = None,
        remote_images: RemoteImageFetcher | None = None,
        moderator: Moderator | None = None,
    ) -> None:
        self._settings = settings
        self._moderator = moderator
        self._remote_images = remote_images
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics
        self._cache = cache
        # Images already decoded by this process (validation/pixels.py).
        self._decoded = DecodedImages()

    # -- entry points, one per answer form ----------------------------------------------------

    async def chat(self, ctx: RequestContext, request: ChatCompletionRequest) -> Answer:
        """A non-streamed chat completion: the worker's JSON body, or a replayed one."""
        prepared = await self._prepare_chat(ctx, request, stream=False)
        answer, cache = await self._answer(ctx, prepared)
        return Answer(answer, cache)

    async def chat_stream(
        self, ctx: RequestContext, request: ChatCompletionRequest
    ) -> StreamedAnswer:
        """A streamed chat completion; returns once the worker's first chunk is in."""
        prepared = await self._prepare_chat(ctx, request, stream=True)
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared)
        if lookup.answer is not None:
            await self._serve_stored(ctx, plan, lookup.answer)
            events = completion_sse(lookup.answer, prepared.model, prepared.client_wants_usage)
            self._observe_ttft(ctx, lookup.outcome)
            return StreamedAnswer(ReplayStream(events), lookup.outcome)
        await self._decode_images(prepared, plan, lookup)
        worker = self._upstream.open_stream(
            CHAT_PATH,
            with_priority(prepared.body, ctx.priority),
            ctx.request_id,
            self._note_worker(ctx),
            affinity_key=_affinity_key(prepared),
            pool=plan.pool,
        )

        guard = None
        if self._moderator is not None and self._moderator.checks_answers:
            guard = self._moderator.stream_guard(ctx.draft)
        # A coalescing leader's generation outlives its client: opened and read to the end
        # for the waiters even when the client leaves (before or after the first chunk).
        leads = lookup.lead is not None

        def record(upstream: ChunkStream) -> RecordingStream:
            async def on_end(answer: CachedAnswer | None) -> None:
                if answer is not None:
                    self._note_answer(ctx, answer)
                self._note_summary(ctx, recording.recorder.summary())
                await self._complete(plan, lookup, self._storable(ctx, plan, answer))

            recording = RecordingStream(
                upstream, prepared.client_wants_usage, on_end, guard, finish_on_close=leads
            )
            return recording

        opening = self._forward(plan, lookup, worker)
        if leads:
            upstream = await keep_going(opening, orphan=lambda opened: record(opened).close())
        else:
            upstream = await opening
        self._observe_ttft(ctx, lookup.outcome)
        ctx.draft.ttft_ms = (time.perf_counter() - ctx.started) * 1000
        stream = record(upstream)
        gaps = self._metrics.inter_token.labels(ctx.route)
        return StreamedAnswer(GapTimer(stream, gaps.observe), lookup.outcome)

    def _observe_ttft(self, ctx: RequestContext, cache: str) -> None:
        self._metrics.ttft.labels(ctx.route, cache).observe(time.perf_counter() - ctx.started)

    async def vqa(self, ctx: RequestContext, request: VQARequest) -> tuple[VQAResponse, str]:
        """The simple shape: one image and a prompt in, the answer's text out."""
        self._admit(ctx, request.model)
        self._note_request(ctx, request.model, request.prompt, stream=False)
        prepared = await prepare_vqa(
            request, self._settings, self._pool.model_ids(), self._remote_images
        )
        ctx.draft.model = prepared.model
        ctx.draft.images = prepared.images
        await self._charge(ctx, prepared)
        body, cache = await self._answer(ctx, prepared)
        answer = answer_from_completion(body)
        if answer is None:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's answer was malformed.")
        return VQAResponse(text=answer.content), cache

    # -- stages -------------------------------------------------------------------------------

    async def _prepare_chat(
        self, ctx: RequestContext, request: ChatCompletionRequest, stream: bool
    ) -> PreparedRequest:
        """Model permission, validation and tokens per minute: what both chat forms share."""
        self._admit(ctx, request.model)
        content = read_chat(request)
        self._note_request(ctx, request.model, content.prompt, stream)
        prepared = await prepare_chat(
            request, self._settings, self._pool.model_ids(), self._remote_images, content
        )
        ctx.draft.images = prepared.images
        self._note_features(ctx, prepared)
        await self._charge(ctx, prepared)
        return prepared

    @staticmethod
    def _admit(ctx: RequestContext, model: str | None) -> None:
        """403 before any validation work when the key may not use the model it names.

        The key itself, requests per minute and concurrency were checked by the admission
        middleware before the body was read (gateway/admission.py)."""
        if ctx.admission is not None:
            ctx.admission.check_model(model)

    @staticmethod
    async def _charge(ctx: RequestContext, prepared: PreparedRequest) -> None:
        """The resolved model's permission, then tokens per minute (429 when over): the
        estimate needs the validated images' sizes. Cache hits are charged too: the limit
        is what the key may ask for, whoever answers it."""
        if ctx.admission is None:
            return
        ctx.admission.check_model(prepared.model)
        sizes = [(image.width, image.height) for image in prepared.images]
        features = prepared.features
        # Schemas and tool definitions are read by the model too; n choices are n answers.
        text = prepared.prompt
        if features.extra_text:
            text = f"{text}\n{features.extra_text}"
        await ctx.admission.charge_tokens(
            estimate_tokens(
                text, sizes, prepared.token_budget * features.choices, prepared.messages
            )
        )

    async def _moderate(self, ctx: RequestContext, prepared: PreparedRequest) -> None:
        """Content policy on prompt and images (400 content_policy_violation)."""
        if self._moderator is not None:
            extra = prepared.features.extra_text  # schemas, tools, earlier tool calls
            prompt = f"{prepared.prompt}\n{extra}" if extra else prepared.prompt
            await self._moderator.check_request(
                ctx.draft, ctx.request_id, prompt, prepared, prepared.prompt_param
            )

    async def _moderate_answer(self, ctx: RequestContext, text: str | None) -> None:
        """Content policy on an answer, fresh or cached, before the client sees it."""
        if self._moderator is not None and text is not None:
            await self._moderator.check_answer(ctx.draft, text)

    async def _serve_stored(
        self, ctx: RequestContext, plan: CachePlan, answer: CachedAnswer
    ) -> None:
        """A cached or coalesced answer passes moderation again before it is served: the
        policy may have changed since it was stored. One it refuses is evicted."""
        self._note_answer(ctx, answer)
        try:
            for content, _ in answer.choices:  # n > 1: each choice on its own
                await self._moderate_answer(ctx, content)
        except GatewayError:
            if self._cache is not None:
                await self._cache.evict(plan)
            raise

    async def _lookup(
        self, ctx: RequestContext, prepared: PreparedRequest
    ) -> tuple[CachePlan, Lookup]:
        if self._cache is None:
            plan, lookup = NO_CACHE, Lookup(BYPASS)
            self._metrics.cache_requests.labels("bypass").inc()
        else:
            # The pool first: the key carries the checkpoint of the workers that will answer.
            pool = self._pool.pick_pool()
            plan = self._cache.plan(prepared, ctx.directives, _cache_scope(ctx), pool)
            ctx.draft.pool = pool  # a hit's row names the pool whose answer it replays
            lookup = await self._cache.lookup(plan)
        ctx.draft.cache = lookup.outcome
        return plan, lookup

    @staticmethod
    def _storable(
        ctx: RequestContext, plan: CachePlan, answer: CachedAnswer | None
    ) -> CachedAnswer | None:
        """An answer from another pool than the key's (a retry moved it) is not stored:
        its checkpoint may not be the one the key names."""
        return None if plan.pool is not None and ctx.draft.pool != plan.pool else answer

    async def _complete(self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None) -> None:
        if self._cache is not None:
            await self._cache.complete(plan, lookup, answer)

    async def _decode_images(
        self, prepared: PreparedRequest, plan: CachePlan, lookup: Lookup
    ) -> None:
        """The full image decode (400 for a corrupt image) before a worker sees the images:
        after the lookup, so a cache hit never decodes pixels (validation/pixels.py)."""
        await self._forward(plan, lookup, prepared.pixels.verify(self._decoded))

    async def _forward(self, plan: CachePlan, lookup: Lookup, call: Awaitable[_R]) -> _R:
        """Await the worker; on any failure (cancellation included) release the cache plan,
        so a coalescing leader's waiters are told to ask for themselves."""
        try:
            return await call
        except BaseException:
            await self._complete(plan, lookup, None)
            raise

    async def _answer(self, ctx: RequestContext, prepared: PreparedRequest) -> tuple[bytes, str]:
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared)
        if lookup.answer is not None:
            await self._serve_stored(ctx, plan, lookup.answer)
            return completion_json(lookup.answer, prepared.model), lookup.outcome
        await self._decode_images(prepared, plan, lookup)
        generation = self._generate(ctx, prepared, plan, lookup)
        if lookup.lead is not None:
            # A coalescing leader generates for its waiters too: its client leaving (common
            # on mobile) does not stop it; the answer is stored and shared all the same.
            return await keep_going(generation), lookup.outcome
        return await generation, lookup.outcome

    async def _generate(
        self, ctx: RequestContext, prepared: PreparedRequest, plan: CachePlan, lookup: Lookup
    ) -> bytes:
        """Ask a worker, check its answer, store and share it: the worker's body."""
        worker = self._upstream.post_json(
            CHAT_PATH,
            with_priority(prepared.body, ctx.priority),
            ctx.request_id,
            self._note_worker(ctx),
            affinity_key=_affinity_key(prepared),
            pool=plan.pool,
        )
        body = await self._forward(plan, lookup, worker)
        answer = answer_from_completion(body)
        if answer is not None:
            self._note_answer(ctx, answer)
        summary = summary_from_completion(body)
        if summary is not None:
            self._note_summary(ctx, summary)
        # A refused answer is never cached; a coalescing leader shares it with its waiters
        # as it is (their own answer checks refuse it again, and nobody generates it twice).
        # Every choice and tool call is checked, each on its own.
        try:
            for text in summary.checked_texts() if summary is not None else ():
                await self._moderate_answer(ctx, text)
        except GatewayError:
            if self._cache is not None:
                await self._cache.complete(plan, lookup, answer, refused=True)
            raise
        except BaseException:
            await self._complete(plan, lookup, None)
            raise
        await self._complete(plan, lookup, self._storable(ctx, plan, answer))
        return body

    # -- the interaction draft ----------------------------------------------------------------

    @staticmethod
    def _note_request(ctx: RequestContext, model: str | None, prompt: str, stream: bool) -> None:
        ctx.draft.model, ctx.draft.prompt, ctx.draft.stream = model, prompt, stream

    @staticmethod
    def _note_answer(ctx: RequestContext, answer: CachedAnswer) -> None:
        draft = ctx.draft
        draft.answer = answer.text
        draft.prompt_tokens, draft.completion_tokens = (
            answer.prompt_tokens,
            answer.completion_tokens,
        )

    @staticmethod
    def _note_summary(ctx: RequestContext, summary: CompletionSummary) -> None:
        """Every choice (n > 1) and tool call; choice 0 alone is what the cache keeps."""
        draft = ctx.draft
        if summary.text is not None:
            draft.answer = summary.text
        draft.tool_calls = summary.logged_tool_calls()
        if summary.completion_tokens is not None:
            draft.prompt_tokens = summary.prompt_tokens
            draft.completion_tokens = summary.completion_tokens

    @staticmethod
    def _note_features(ctx: RequestContext, prepared: PreparedRequest) -> None:
        features, draft = prepared.features, ctx.draft
        draft.response_format = features.response_format
        draft.schema_name, draft.schema_sha256 = features.schema_name, features.schema_sha256
        draft.end_user_sha256 = features.end_user_sha256
        draft.request_metadata = features.metadata
        draft.request_options = features.options

    def _note_worker(self, ctx: RequestContext) -> Callable[[str], None]:
        def note(worker_url: str) -> None:
            # Called once per attempt: the row keeps the last worker, its pool and the
            # attempt count.
            ctx.draft.worker_id = worker_url
            ctx.draft.pool = self._pool.pool_of(worker_url)
            ctx.draft.upstream_attempts = (ctx.draft.upstream_attempts or 0) + 1

        return note
