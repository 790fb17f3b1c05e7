"""Matching through the same stages as a chat request: the key's model permission and
tokens per minute, validation (the image checked as /v1/vqa checks it), moderation of
the texts and the image, the answer cache and coalescing (a score is cached like an
answer), the worker pool; one greedy one-token worker request per candidate text, all
sharing the photo's prefix in the worker's cache.

A score travels through the answer cache and coalescing as a CachedAnswer whose content
is ``[p_yes, p_no]`` (finish_reason "match"); its key carries INSTRUCTION_VERSION, so no
chat request can ever read it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from gateway.admission import Admission
from gateway.answers import CachedAnswer
from gateway.batch.lane import with_priority
from gateway.cache.keys import derive_key
from gateway.cache.stage import (
    BYPASS,
    COALESCED,
    HIT,
    MISS,
    NO_CACHE,
    CachePlan,
    CacheStage,
    Lookup,
)
from gateway.cache.store import CacheDirectives
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.draft import InteractionDraft
from gateway.interactions.records import CacheOutcome
from gateway.matching.instruction import (
    INSTRUCTION_VERSION,
    Labels,
    Probabilities,
    logprob_fields,
    prompt_for,
    read_probabilities,
)
from gateway.matching.labels import TOKENIZE_PATH, LabelFinder
from gateway.matching.protocol import MatchRequest, MatchResponse, MatchScore, MatchUsage
from gateway.metrics import Metrics
from gateway.moderation import Moderator
from gateway.moderation.images import image_parts
from gateway.protocol import VQARequest
from gateway.ratelimit import estimate_tokens
from gateway.remote_images import RemoteImageFetcher
from gateway.upstream.pool import WorkerPool
from gateway.upstream.proxy import Upstream
from gateway.validation.pixels import DecodedImages
from gateway.validation.prepare import PreparedRequest, prepare_vqa

CHAT_PATH: Final = "/v1/chat/completions"
_FINISH: Final = "match"
# X-Cache for the whole request: its weakest outcome.
_ORDER: Final[tuple[CacheOutcome, ...]] = (BYPASS, MISS, COALESCED, HIT)


@dataclass(frozen=True, slots=True)
class MatchCall:
    """What the stages know about the request besides its body (the route's context)."""

    request_id: str
    draft: InteractionDraft
    admission: Admission | None = None
    directives: CacheDirectives = dataclasses.field(default_factory=CacheDirectives)
    priority: int | None = None  # batch lines (gateway/batch/lane.py)


def _encode(probabilities: Probabilities) -> CachedAnswer:
    content = orjson.dumps([probabilities.p_yes, probabilities.p_no]).decode()
    return CachedAnswer(content, _FINISH, probabilities.prompt_tokens, 1)


def _decode(answer: CachedAnswer) -> Probabilities | None:
    try:
        p_yes, p_no = orjson.loads(answer.content)
        return Probabilities(float(p_yes), float(p_no), answer.prompt_tokens)
    except (ValueError, TypeError):
        return None


class Matcher:
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
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics
        self._cache = cache
        self._remote_images = remote_images
        self._moderator = moderator
        self._labels = LabelFinder(self._tokenize)
        self._decoded = DecodedImages()

    async def _tokenize(self, body: bytes, pool: str | None) -> bytes:
        return await self._upstream.post_json(TOKENIZE_PATH, body, "match-labels", pool=pool)

    async def match(self, call: MatchCall, request: MatchRequest) -> tuple[MatchResponse, str]:
        """One score per candidate text, in order; and the request's X-Cache."""
        if call.admission is not None:
            call.admission.check_model(request.model)
        self._check_texts(request.texts)
        draft = call.draft
        draft.model, draft.prompt = request.model, "\n".join(request.texts)
        prepared = await self._prepare(request)
        draft.model, draft.images = prepared[0].model, prepared[0].images
        await self._charge(call, prepared)
        if self._moderator is not None:
            await self._moderator.check_request(
                draft, call.request_id, draft.prompt, prepared[0], "texts"
            )
        pool = self._pool.pick_pool() if self._cache is not None else None
        draft.pool = pool
        scored = await asyncio.gather(*(self._score(call, p, pool) for p in prepared))
        cache = min((outcome for _, outcome in scored), key=_ORDER.index)
        draft.cache = cache
        data = [
            MatchScore(index=i, score=p.score, p_yes=p.p_yes, p_no=p.p_no, cache=outcome)
            for i, (p, outcome) in enumerate(scored)
        ]
        prompt_tokens = sum(p.prompt_tokens for p, _ in scored)
        draft.prompt_tokens, draft.completion_tokens = prompt_tokens, len(scored)
        draft.answer = orjson.dumps([item.score for item in data]).decode()
        usage = MatchUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(scored),
            total_tokens=prompt_tokens + len(scored),
        )
        answer = MatchResponse(
            model=prepared[0].model, instruction=INSTRUCTION_VERSION, data=data, usage=usage
        )
        return answer, cache

    def _check_texts(self, texts: list[str]) -> None:
        limits = self._settings.match
        if len(texts) > limits.max_texts:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"'texts' holds {len(texts)} texts; the limit is {limits.max_texts}.",
                param="texts",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise GatewayError(
                    ErrorCode.PROMPT_TOO_LONG,
                    f"A text has {len(text)} characters; the limit is {limits.max_text_chars}.",
                    param=f"texts[{i}]",
                )

    async def _prepare(self, request: MatchRequest) -> list[PreparedRequest]:
        """One greedy one-token request per text, each validated as /v1/vqa validates. The
        image is fetched and checked with the first; the others reuse its data URI."""

        def vqa(image: str, text: str) -> VQARequest:
            return VQARequest(
                image=image, prompt=prompt_for(text), max_tokens=1, model=request.model
            )

        settings, models = self._settings, self._pool.model_ids()
        first = await prepare_vqa(
            vqa(request.image, request.texts[0]), settings, models, self._remote_images
        )
        if len(request.texts) == 1:
            return [first]
        (part,) = await image_parts(first.body)
        uri = str(part["image_url"]["url"])
        rest = [prepare_vqa(vqa(uri, text), settings, models) for text in request.texts[1:]]
        return [first, *await asyncio.gather(*rest)]

    @staticmethod
    async def _charge(call: MatchCall, prepared: list[PreparedRequest]) -> None:
        if call.admission is None:
            return
        call.admission.check_model(prepared[0].model)
        text = "\n".join(p.prompt for p in prepared)
        images = sum(p.image_tokens for p in prepared)  # as the image processor counts them
        await call.admission.charge_tokens(
            estimate_tokens(text, (), len(prepared), len(prepared)) + images
        )

    def _plan(self, call: MatchCall, prepared: PreparedRequest, pool: str | None) -> CachePlan:
        if self._cache is None or not (call.directives.read or call.directives.write):
            return NO_CACHE if pool is None else dataclasses.replace(NO_CACHE, pool=pool)
        checkpoint = self._pool.model_root(prepared.model, pool)
        revision = f"{self._settings.model_revision}|{checkpoint}|{INSTRUCTION_VERSION}"
        key = call.admission.key if call.admission is not None else None
        if key is not None and key.private_cache:
            revision += f"|key:{key.key_id}"
        digests = [image.sha256 for image in prepared.images]
        cache_key = derive_key(
            self._settings.cache_namespace, prepared.model, revision, prepared.canonical, digests
        )
        return CachePlan(cache_key, call.directives.read, call.directives.write, pool=pool)

    async def _lookup(self, plan: CachePlan) -> Lookup:
        if self._cache is None:
            self._metrics.cache_requests.labels(BYPASS).inc()
            return Lookup(BYPASS)
        return await self._cache.lookup(plan)

    async def _complete(self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None) -> None:
        if self._cache is not None:
            await self._cache.complete(plan, lookup, answer)

    async def _score(
        self, call: MatchCall, prepared: PreparedRequest, pool: str | None
    ) -> tuple[Probabilities, CacheOutcome]:
        plan = self._plan(call, prepared, pool)
        lookup = await self._lookup(plan)
        stored = _decode(lookup.answer) if lookup.answer is not None else None
        if stored is not None:
            return stored, lookup.outcome
        try:
            await prepared.pixels.verify(self._decoded)
            checkpoint = self._pool.model_root(prepared.model, plan.pool)
            labels = await self._labels.labels(prepared.model, checkpoint, plan.pool)
            answer = await self._upstream.post_json(
                CHAT_PATH,
                _worker_body(prepared.body, labels, call.priority),
                call.request_id,
                self._note_worker(call),
                affinity_key=prepared.images[0].sha256,
                pool=plan.pool,
            )
            probabilities = read_probabilities(answer, labels)
        except BaseException:
            await self._complete(plan, lookup, None)  # a leader's waiters ask for themselves
            raise
        await self._complete(plan, lookup, _encode(probabilities))
        return probabilities, lookup.outcome

    def _note_worker(self, call: MatchCall) -> Callable[[str], None]:
        def note(worker_url: str) -> None:
            draft = call.draft
            draft.worker_id, draft.pool = worker_url, self._pool.pool_of(worker_url)
            draft.upstream_attempts = (draft.upstream_attempts or 0) + 1

        return note


def _worker_body(body: bytes, labels: Labels, priority: int | None) -> bytes:
    """The prepared greedy one-token body with the label log-probabilities asked for."""
    return with_priority(b"{" + logprob_fields(labels) + body[1:], priority)
