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

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from gateway.admission import Admission
from gateway.answers import CachedAnswer, answer_from_completion, summary_from_completion
from gateway.background import detach, keep_going
from gateway.batch.lane import with_priority
from gateway.cache.idempotency import scoped
from gateway.cache.recall import Recall, Recalled, Reparse
from gateway.cache.replay import completion_json, completion_sse
from gateway.cache.stage import (
    BYPASS,
    NO_CACHE,
    CachePlan,
    CacheStage,
    Lookup,
)
from gateway.cache.store import CacheDirectives
from gateway.charge import charge_tokens, check_model
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.images import is_remote_url
from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation import Moderator, Violation
from gateway.notes import note_answer, note_features, note_request, note_summary, note_worker
from gateway.protocol import ChatCompletionRequest, VQARequest, VQAResponse
from gateway.remote_images import RemoteImageFetcher
from gateway.streams import CONTENT_FILTER, ChunkStream, GapTimer, RecordingStream, ReplayStream
from gateway.upstream.pool import WorkerPool
from gateway.upstream.proxy import Upstream
from gateway.upstream.shape import Repairs, ShapedStream, shape_completion
from gateway.validation.pixels import DecodedImages
from gateway.validation.prepare import PreparedRequest, prepare_chat, prepare_vqa, read_chat

CHAT_PATH = "/v1/chat/completions"
# The category of a waiter's refusal its own check did not find: its leader's guard did.
LEADER_REFUSED = Violation("leader_refused")

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
    # The Idempotency-Key header's key, checked (gateway/cache/idempotency.py).
    idempotency_key: str | None = None


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


def _cache_scope(ctx: RequestContext) -> tuple[str | None, bool]:
    """The key's id when its cache is its own (X-Cache then tells no key what another one
    asked about the same photo), and whether it takes near-duplicate answers (without API
    keys, the deployment's setting alone decides)."""
    key = ctx.admission.key if ctx.admission is not None else None
    if key is None:
        return None, True
    return (key.key_id if key.private_cache else None), key.near_cache


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

    def recall(self, path: str, raw: bytes, reparse: Reparse) -> Recall | None:
        """The body prepared before, if this replica has it (cache/recall.py); None when
        the cache is off. ``reparse``: the body's typed request, for a worker."""
        if self._cache is None:
            return None
        return self._cache.recall(path, raw, reparse, self._pool.model_ids)

    async def chat(
        self,
        ctx: RequestContext,
        request: ChatCompletionRequest | Recalled,
        recall: Recall | None = None,
    ) -> Answer:
        """A non-streamed chat completion: the worker's JSON body, or a replayed one."""
        prepared = await self._prepare_chat(ctx, request, stream=False, recall=recall)
        answer, cache = await self._answer(ctx, prepared, recall)
        return Answer(answer, cache)

    async def chat_stream(
        self,
        ctx: RequestContext,
        request: ChatCompletionRequest | Recalled,
        recall: Recall | None = None,
    ) -> StreamedAnswer:
        """A streamed chat completion; returns once the worker's first chunk is in."""
        prepared = await self._prepare_chat(ctx, request, stream=True, recall=recall)
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared, recall)
        if lookup.answer is not None:
            await self._serve_stored(ctx, plan, lookup.answer)
            events = completion_sse(lookup.answer, prepared.model, prepared.client_wants_usage)
            self._observe_ttft(ctx, lookup.outcome)
            return StreamedAnswer(ReplayStream(events), lookup.outcome)
        prepared = await self._forward(plan, lookup, self._in_full(prepared, recall))
        await self._decode_images(prepared, plan, lookup)
        worker = self._upstream.open_stream(
            CHAT_PATH,
            with_priority(prepared.body, ctx.priority),
            ctx.request_id,
            note_worker(ctx.draft, self._pool.pool_of),
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
                    note_answer(ctx.draft, answer)
                note_summary(ctx.draft, recording.recorder.summary())
                await self._complete(plan, lookup, self._storable(ctx, plan, prepared, answer))

            async def on_refused(answer: CachedAnswer) -> None:  # shared as a refusal
                note_summary(ctx.draft, recording.recorder.summary())
                await self._complete(plan, lookup, answer, refused=True)

            recording = RecordingStream(
                ShapedStream(upstream, self._repairs(prepared)),
                prepared.client_wants_usage, on_end, guard, leads, on_refused,
            )  # fmt: skip
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

    async def vqa(
        self, ctx: RequestContext, request: VQARequest | Recalled, recall: Recall | None = None
    ) -> tuple[VQAResponse, str]:
        """The simple shape: one image and a prompt in, the answer's text out."""
        if isinstance(request, Recalled):
            prepared = await self._recalled(ctx, request.prepared)
        else:
            check_model(ctx.admission, request.model)
            note_request(ctx.draft, request.model, request.prompt, stream=False)
            if recall is not None:
                recall.keepable = not is_remote_url(request.image)
            prepared = await prepare_vqa(
                request, self._settings, self._pool.model_ids(), self._remote_images
            )
            ctx.draft.model = prepared.model
            ctx.draft.images = prepared.images
            await charge_tokens(ctx.admission, prepared)
        body, cache = await self._answer(ctx, prepared, recall, vqa=True)
        answer = answer_from_completion(body)
        if answer is None:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's answer was malformed.")
        return VQAResponse(text=answer.content), cache

    # -- stages -------------------------------------------------------------------------------

    async def _prepare_chat(
        self,
        ctx: RequestContext,
        request: ChatCompletionRequest | Recalled,
        stream: bool,
        recall: Recall | None,
    ) -> PreparedRequest:
        """Model permission, validation and tokens per minute: what both chat forms share."""
        if isinstance(request, Recalled):
            return await self._recalled(ctx, request.prepared)
        check_model(ctx.admission, request.model)
        content = read_chat(request)
        if recall is not None:
            recall.keepable = not any(is_remote_url(p.image_url.url) for p, _ in content.images)
        note_request(ctx.draft, request.model, content.prompt, stream)
        prepared = await prepare_chat(
            request, self._settings, self._pool.model_ids(), self._remote_images, content
        )
        ctx.draft.images = prepared.images
        note_features(ctx.draft, prepared)
        await charge_tokens(ctx.admission, prepared)
        return prepared

    async def _recalled(self, ctx: RequestContext, prepared: PreparedRequest) -> PreparedRequest:
        """A body prepared before: what preparing it would have noted, and its charge."""
        check_model(ctx.admission, prepared.model)
        note_request(ctx.draft, prepared.model, prepared.prompt, prepared.stream)
        ctx.draft.images = prepared.images
        note_features(ctx.draft, prepared)
        await charge_tokens(ctx.admission, prepared)
        return prepared

    async def _in_full(self, prepared: PreparedRequest, recall: Recall | None) -> PreparedRequest:
        """A recalled request on its way to a worker: prepared again from its bytes."""
        if recall is None or recall.found is None:
            return prepared
        known = self._pool.model_ids()
        return await recall.prepare_again(self._settings, known, self._remote_images)

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
        note_answer(ctx.draft, answer)
        try:
            for content, _ in answer.choices:  # n > 1: each choice on its own
                await self._moderate_answer(ctx, content)
            if answer.finish_reason == CONTENT_FILTER and self._moderator is not None:
                # A stream its leader's guard cut off: refused here too, whatever the check.
                raise self._moderator.blocked(ctx.draft, "answer", LEADER_REFUSED, None)
        except GatewayError:
            if self._cache is not None:
                await self._cache.evict(plan)
            raise

    async def _lookup(
        self,
        ctx: RequestContext,
        prepared: PreparedRequest,
        recall: Recall | None = None,
        vqa: bool = False,
    ) -> tuple[CachePlan, Lookup]:
        if self._cache is None:
            plan, lookup = NO_CACHE, Lookup(BYPASS)
            self._metrics.cache_requests.labels("bypass").inc()
        else:
            # The pool first: the key carries the checkpoint of the workers that will answer.
            pool = self._pool.pick_pool()
            key = ctx.admission.key if ctx.admission is not None else None
            idempotency = scoped(ctx.idempotency_key, key.key_id if key is not None else None)
            scope, near = _cache_scope(ctx)
            plan = self._cache.plan(
                prepared, ctx.directives, scope, pool, idempotency=idempotency, near=near
            )
            ctx.draft.pool = pool  # a hit's row names the pool whose answer it replays
            lookup_call = self._cache.lookup(plan)
            if plan.key is not None and plan.read:  # it may take a lease (SET NX): let it
                # finish if the client leaves meanwhile; the lease is then released at once
                lookup = await keep_going(lookup_call, orphan=self._release(plan))
            else:
                lookup = await lookup_call
            if lookup.lead is not None and ctx.admission is not None:
                lookup.on_end = ctx.admission.hold()  # its slot, until the generation ends
            if lookup.answer is not None and recall is not None:
                self._cache.keep(recall, prepared, vqa)  # its next hit skips preparing
        ctx.draft.cache = lookup.outcome
        if lookup.near is not None:  # the row names the entry replayed, and how far
            ctx.draft.cache_source, ctx.draft.cache_distance = lookup.near.source
            plan = replace(plan, key=lookup.near.answer_key)  # a refusal evicts its source
        return plan, lookup

    def _storable(
        self, ctx: RequestContext, plan: CachePlan, prepared: PreparedRequest,
        answer: CachedAnswer | None,
    ) -> CachedAnswer | None:  # fmt: skip
        """Only under the checkpoint of the worker that produced it: the key names one,
        and a retry, a fallback pool or a rolling update may have sent it to another."""
        worker = ctx.draft.worker_id or ""
        root = self._pool.root_of(worker, prepared.model)
        same = plan.claim is not None or root == plan.checkpoint  # an Idempotency-Key's: any
        return answer if same else None

    def _release(self, plan: CachePlan) -> Callable[[Lookup], None]:
        """For a lookup whose request is gone: give up the lead it won, if it won one."""

        def release(lookup: Lookup) -> None:
            if lookup.lead is not None:
                detach(self._complete(plan, lookup, None))

        return release

    def _repairs(self, prepared: PreparedRequest) -> Repairs:
        count = self._metrics.json_repairs
        return Repairs(prepared.features.structured, lambda part: count.labels(part).inc())

    async def _complete(
        self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None, refused: bool = False
    ) -> None:
        if self._cache is not None:
            await self._cache.complete(plan, lookup, answer, refused)

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

    async def _answer(
        self,
        ctx: RequestContext,
        prepared: PreparedRequest,
        recall: Recall | None,
        vqa: bool = False,
    ) -> tuple[bytes, str]:
        await self._moderate(ctx, prepared)
        plan, lookup = await self._lookup(ctx, prepared, recall, vqa)
        if lookup.answer is not None:
            await self._serve_stored(ctx, plan, lookup.answer)
            return completion_json(lookup.answer, prepared.model), lookup.outcome
        prepared = await self._forward(plan, lookup, self._in_full(prepared, recall))
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
            note_worker(ctx.draft, self._pool.pool_of),
            affinity_key=_affinity_key(prepared),
            pool=plan.pool,
        )
        raw = await self._forward(plan, lookup, worker)
        completed = False  # the plan released, whatever happens below (a lead never lingers)
        try:
            shaped = shape_completion(raw, self._repairs(prepared))  # 502 if malformed
            answer = answer_from_completion(shaped.data)
            if answer is not None:
                note_answer(ctx.draft, answer)
            summary = summary_from_completion(shaped.data)
            if summary is not None:
                note_summary(ctx.draft, summary)
            # A refused answer is never cached; a coalescing leader shares it with its
            # waiters as it is (their own answer checks refuse it again, and nobody
            # generates it twice). Every choice and tool call is checked on its own.
            try:
                for text in summary.checked_texts() if summary is not None else ():
                    await self._moderate_answer(ctx, text)
            except GatewayError:
                completed = True
                await self._complete(plan, lookup, answer, refused=True)
                raise
            completed = True
            await self._complete(plan, lookup, self._storable(ctx, plan, prepared, answer))
            return shaped.body
        finally:
            if not completed:
                await self._complete(plan, lookup, None)
