"""The cache stage of the pipeline: plan, look up (or coalesce), and complete.

    plan      cacheable? which key? may we read, may we write (Cache-Control)?
    lookup    in memory (local.py) or Redis hit -> the answer; else, for a key that opted
              in, an answer to the same question about the same photo in another
              encoding (near/: X-Cache similar); else lead or join an identical
              in-flight request
    complete  store a complete answer, and share it with the waiters (or tell them to go)
    evict     forget a stored answer that moderation now refuses

A request with an Idempotency-Key is planned under that key instead (idempotency.py).

Every Redis problem turns into an outcome, never into an error for the client:
X-Cache says hit, similar, miss, coalesced or bypass (the cache was not consulted), or
idempotent.

The near-duplicate lookup runs before the coalescing lease is taken (a plain GET first,
then the index): a request served a near match never leads, so no exact waiter ever
waits on one, and a near match is never stored under the request's own key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from gateway.answers import CachedAnswer
from gateway.background import detach
from gateway.cache.coalesce import REDIS_UNAVAILABLE, Alone, Coalescer, Joined, Lead, Stored
from gateway.cache.idempotency import (
    Claim,
    Claims,
    IdempotencyKey,
    answer_key,
    body_digest,
    claim_key,
)
from gateway.cache.keys import derive_key, is_deterministic
from gateway.cache.local import LocalAnswers
from gateway.cache.near.group import near_group
from gateway.cache.near.lookup import NearCache, NearMatch, NearProbe
from gateway.cache.recall import Recall, RecalledRequests, Reparse
from gateway.cache.store import AnswerCache, CacheDirectives, CacheUnavailable
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.records import CacheOutcome
from gateway.metrics import Metrics
from gateway.validation.prepare import PreparedRequest

HIT: Final[CacheOutcome] = "hit"
MISS: Final[CacheOutcome] = "miss"
COALESCED: Final[CacheOutcome] = "coalesced"
SIMILAR: Final[CacheOutcome] = "similar"
BYPASS: Final[CacheOutcome] = "bypass"
# Answered under the request's Idempotency-Key: its stored answer, or its generation joined.
IDEMPOTENT: Final[CacheOutcome] = "idempotent"


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: str | None  # None: not cacheable, or the cache is off
    read: bool
    write: bool
    # Structured outputs: only an answer that parses as JSON is stored (a truncated or
    # malformed one is served as it is, never replayed).
    json_answer: bool = False
    # The worker pool the key's checkpoint is taken from (canary rollouts): the request is
    # sent there.
    pool: str | None = None
    # The checkpoint (vLLM's `root`) the key names: only an answer from a worker serving
    # it is stored under the key.
    checkpoint: str | None = None
    # An Idempotency-Key's plan: its claim (the 409 check) and how long its answer is kept.
    claim: Claim | None = None
    ttl_s: int | None = None
    # The near-duplicate stage's part (near/lookup.py): None when it is off.
    near: NearProbe | None = None


NO_CACHE: Final = CachePlan(None, read=False, write=False)


@dataclass(slots=True)
class Lookup:
    outcome: CacheOutcome
    answer: CachedAnswer | None = None
    lead: Lead | None = None
    # Awaited once the lead's generation has ended (complete): it gives back what the
    # request holds while it generates, e.g. its key's concurrency slot.
    on_end: Callable[[], Awaitable[None]] | None = None
    # SIMILAR: the stored answer it replays, and how far its photos are.
    near: NearMatch | None = None


class CacheStage:
    def __init__(
        self,
        cache: AnswerCache,
        coalescer: Coalescer | None,
        settings: Settings,
        metrics: Metrics,
        model_root: Callable[[str, str | None], str],
        local: LocalAnswers | None = None,
        recalled: RecalledRequests | None = None,
        claims: Claims | None = None,
        near: NearCache | None = None,
    ) -> None:
        self._cache = cache
        self._claims = claims
        self._near = near
        self._coalescer = coalescer
        self._settings = settings
        self._metrics = metrics
        self._local = local
        # Bodies whose answers were found here, prepared already (recall.py).
        self.recalled = recalled
        # The checkpoint last seen per (model, pool): a new one empties the local cache.
        self._checkpoints: dict[tuple[str, str | None], str] = {}
        self._local_hits = metrics.cache_local_lookups.labels("hit")
        self._local_misses = metrics.cache_local_lookups.labels("miss")
        # What the workers serve under a model name (their checkpoint path or hub id):
        # part of the key, so a new checkpoint behind the same name never replays old answers.
        self._model_root = model_root

    def plan(
        self,
        prepared: PreparedRequest,
        directives: CacheDirectives,
        scope: str | None = None,
        pool: str | None = None,
        idempotency: IdempotencyKey | None = None,
        near: bool = False,
    ) -> CachePlan:
        """``scope`` (an API key's id, for a key whose cache is its own) is part of the key,
        so its answers and generations are shared with no other key. ``pool``: the worker
        pool the request goes to, whose checkpoint the key carries. ``idempotency``: the
        request's Idempotency-Key, which replaces the answer cache's key. ``near``: the key
        opted in to near-duplicate answers."""
        if idempotency is not None:
            return self._idempotent_plan(prepared, idempotency, pool)
        deterministic = is_deterministic(
            {"temperature": prepared.temperature, "seed": prepared.seed},
            self._settings.cache_seeded_requests,
        )
        # Not cacheable: still sent to the pool already picked (one pick per request keeps
        # the pools' shares exact).
        uncached = NO_CACHE if pool is None else replace(NO_CACHE, pool=pool)
        if not deterministic or not (directives.read or directives.write):
            return uncached
        if prepared.features.cache_bypass is not None:
            # logprobs and tool calls are not in the stored answer's shape.
            return uncached
        checkpoint = self._model_root(prepared.model, pool)
        if self._local is not None and self._checkpoints.get((prepared.model, pool)) != checkpoint:
            if (prepared.model, pool) in self._checkpoints:
                self._local.clear()  # every key changes: the old answers are dead weight
            self._checkpoints[(prepared.model, pool)] = checkpoint
        revision = f"{self._settings.model_revision}|{checkpoint}"
        if scope is not None:
            revision += f"|key:{scope}"
        key = derive_key(
            self._settings.cache_namespace,
            prepared.model,
            revision,
            prepared.canonical,
            [image.sha256 for image in prepared.images],
        )
        probe = None
        if self._near is not None and prepared.images:
            group = near_group(
                self._settings.cache_namespace, prepared.model, revision, prepared.canonical
            )
            probe = NearProbe(group, prepared, serve=near and directives.read)
        return CachePlan(
            key,
            directives.read,
            directives.write,
            json_answer=prepared.features.structured,
            pool=pool,
            checkpoint=checkpoint,
            near=probe,
        )

    def _idempotent_plan(
        self, prepared: PreparedRequest, idempotency: IdempotencyKey, pool: str | None
    ) -> CachePlan:
        """Read and written whatever the sampling and Cache-Control say: its answer is only
        ever served to the same API key's retries of the same body, and kept whichever
        checkpoint produced it (no checkpoint), JSON or not: the retry gets what was sent."""
        if prepared.features.cache_bypass is not None:
            raise GatewayError(
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"Idempotency-Key cannot be used with {prepared.features.cache_bypass}: "
                "such answers are not kept for a retry. Send the request without it.",
                param="Idempotency-Key",
            )
        namespace = self._settings.cache_namespace
        digests = [image.sha256 for image in prepared.images]
        digest = body_digest(prepared.model, prepared.canonical, digests)
        return CachePlan(
            answer_key(namespace, idempotency, digest),
            read=True,
            write=True,
            pool=pool,
            claim=Claim(claim_key(namespace, idempotency), digest),
            ttl_s=self._settings.idempotency_ttl_s,
        )

    async def lookup(self, plan: CachePlan) -> Lookup:
        if plan.claim is not None and plan.key is not None:
            return await self._idempotent_lookup(plan.key, plan.claim)
        if plan.key is None or not plan.read:
            return self._count(Lookup(BYPASS))
        if self._local is not None:
            answer = self._local.get(plan.key)
            if answer is not None:
                self._local_hits.inc()
                return self._count(Lookup(HIT, answer=answer))
            self._local_misses.inc()
        if self._coalescer is None:
            try:
                stored = await self._cache.get(plan.key)
            except CacheUnavailable:
                self._metrics.cache_errors.labels("get").inc()
                return self._count(Lookup(BYPASS))
            if stored is not None:
                self._remember(plan.key, stored)
                return self._count(Lookup(HIT, answer=stored))
            return self._count(await self._similar(plan.near) or Lookup(MISS))
        if plan.near is not None and plan.near.serve:
            found = await self._before_lease(plan.key, plan.near)
            if found is not None:
                return self._count(found)
        # One round trip: the stored answer, or the lead, or a wait for the leader.
        outcome = await self._coalescer.acquire(plan.key)
        if isinstance(outcome, Stored):
            self._remember(plan.key, outcome.answer)
            return self._count(Lookup(HIT, answer=outcome.answer))
        if isinstance(outcome, Joined):
            return self._count(Lookup(COALESCED, answer=outcome.answer))
        if isinstance(outcome, Alone):
            if outcome.reason == REDIS_UNAVAILABLE:
                self._metrics.cache_errors.labels("get").inc()
                return self._count(Lookup(BYPASS))
            self._metrics.coalesce_fallbacks.labels(outcome.reason).inc()
            return self._count(Lookup(MISS))
        if outcome.local_only:  # Redis could not be asked: the cache was not consulted
            self._metrics.cache_errors.labels("get").inc()
            return self._count(Lookup(BYPASS, lead=outcome))
        return self._count(Lookup(MISS, lead=outcome))

    async def _idempotent_lookup(self, key: str, claim: Claim) -> Lookup:
        """Its claim (409 for another body: raises GatewayError), then its answer, or the
        lead of its generation. Counted apart from the answer cache's lookups (its ratio
        and alerts): gateway_idempotency_requests_total."""
        count = self._metrics.idempotency_requests
        if self._claims is not None:
            try:
                await self._claims.claim(claim)
            except CacheUnavailable:  # unchecked; the body is in the key all the same
                self._metrics.cache_errors.labels("claim").inc()
            except GatewayError:
                count.labels("conflict").inc()
                raise
        found = self._local.get(key) if self._local is not None else None
        if found is not None:
            lookup = Lookup(IDEMPOTENT, answer=found)
        elif self._coalescer is None:
            try:
                found = await self._cache.get(key)
                lookup = Lookup(MISS) if found is None else Lookup(IDEMPOTENT, answer=found)
            except CacheUnavailable:
                self._metrics.cache_errors.labels("get").inc()
                lookup = Lookup(BYPASS)
        else:
            outcome = await self._coalescer.acquire(key)
            if isinstance(outcome, Stored | Joined):
                lookup = Lookup(IDEMPOTENT, answer=outcome.answer)
            elif isinstance(outcome, Alone):
                unavailable = outcome.reason == REDIS_UNAVAILABLE
                if unavailable:
                    self._metrics.cache_errors.labels("get").inc()
                else:
                    self._metrics.coalesce_fallbacks.labels(outcome.reason).inc()
                lookup = Lookup(BYPASS if unavailable else MISS)
            else:  # a lead: for this replica alone when Redis could not be asked
                lookup = Lookup(BYPASS if outcome.local_only else MISS, lead=outcome)
        count.labels(lookup.outcome).inc()
        return lookup

    async def _before_lease(self, key: str, probe: NearProbe) -> Lookup | None:
        """A key that takes near answers: the stored answer, else a near one, before any
        lease. None: neither (or Redis failed: the coalescer then leads for this replica
        alone, as for any request)."""
        try:
            stored = await self._cache.get(key)
        except CacheUnavailable:
            return None
        if stored is not None:
            self._remember(key, stored)
            return Lookup(HIT, answer=stored)
        return await self._similar(probe)

    async def _similar(self, probe: NearProbe | None) -> Lookup | None:
        if self._near is None or probe is None or not probe.serve:
            return None
        match = await self._near.find(probe)
        return None if match is None else Lookup(SIMILAR, answer=match.answer, near=match)

    async def complete(
        self,
        plan: CachePlan,
        lookup: Lookup,
        answer: CachedAnswer | None,
        refused: bool = False,
    ) -> None:
        """Store a complete answer (when allowed) and, for a leader, wake the waiters.

        ``refused``: moderation refused the answer; it is shared with the waiters (whose
        own checks refuse it again) but never stored."""
        # Shielded: a client that leaves must not leave waiters hanging on a held lease.
        await asyncio.shield(self._complete_and_end(plan, lookup, answer, refused))

    async def _complete_and_end(
        self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None, refused: bool
    ) -> None:
        try:
            await self._complete(plan, lookup, answer, refused)
        finally:
            on_end, lookup.on_end = lookup.on_end, None
            if on_end is not None:
                await on_end()

    async def _complete(
        self, plan: CachePlan, lookup: Lookup, answer: CachedAnswer | None, refused: bool
    ) -> None:
        storable = answer is not None and plan.key is not None and plan.write and not refused
        if storable and answer is not None and not self._cache.fits(answer):
            self._metrics.cache_stores.labels("too_large").inc()
            storable = False
        if (
            storable
            and answer is not None
            and plan.json_answer
            and not all(_parses(content) for content, _ in answer.choices)
        ):
            self._metrics.cache_stores.labels("not_json").inc()
            storable = False
        if storable and answer is not None and plan.key is not None:
            self._remember(plan.key, answer)
        if lookup.lead is not None and self._coalescer is not None:
            ttl = (plan.ttl_s or self._cache.ttl_seconds) if storable else None
            await self._coalescer.finish(lookup.lead, answer, ttl)
            if storable:
                self._metrics.cache_stores.labels("stored").inc()
                self._index_near(plan)
            return
        if storable and answer is not None and plan.key is not None:
            try:
                await self._cache.put(plan.key, answer, plan.ttl_s)
                self._metrics.cache_stores.labels("stored").inc()
                self._index_near(plan)
            except CacheUnavailable:
                self._metrics.cache_errors.labels("put").inc()
                self._metrics.cache_stores.labels("failed").inc()

    def _index_near(self, plan: CachePlan) -> None:
        """A stored answer joins the near-duplicate index, off the request's path."""
        if self._near is not None and plan.near is not None and plan.key is not None:
            detach(self._near.index(plan.near, plan.key))

    async def evict(self, plan: CachePlan) -> None:
        """Forget a stored answer that may no longer be served (a policy now refuses it),
        so every later request asks a worker instead of being refused until the TTL ends."""
        if plan.key is None:
            return
        if self._local is not None:
            self._local.delete(plan.key)
        try:
            await self._cache.delete(plan.key)
        except CacheUnavailable:
            self._metrics.cache_errors.labels("delete").inc()

    def recall(
        self, path: str, raw: bytes, reparse: Reparse, served: Callable[[], frozenset[str]]
    ) -> Recall | None:
        """The body's place among those prepared before (recall.py); None when off."""
        if self.recalled is None:
            return None
        recall = self.recalled.recall(path, raw, reparse, served)
        if recall.found is not None:
            self._metrics.cache_recalls.inc()
        return recall

    def keep(self, recall: Recall, prepared: PreparedRequest, vqa: bool) -> None:
        """Keep a body whose answer was found, prepared, for its next hit (recall.py)."""
        if self.recalled is not None:
            self.recalled.keep(recall, prepared, vqa)

    def _remember(self, key: str, answer: CachedAnswer) -> None:
        if self._local is not None:
            self._local.put(key, answer)

    def _count(self, lookup: Lookup) -> Lookup:
        self._metrics.cache_requests.labels(lookup.outcome).inc()
        return lookup


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
