"""Idempotency-Key's Redis side against the machine's Redis and a real Redis Cluster
(``redis_target``): the claim that binds a key to its first body, and the coalescing of
a retry under the key's own answer key, across two replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.answers import CachedAnswer
from gateway.cache.coalesce import Joined, Lead, Stored
from gateway.cache.idempotency import Claim, Claims, IdempotencyKey, answer_key, claim_key
from gateway.cache.store import CacheUnavailable
from gateway.errors import ErrorCode, GatewayError
from tests.support.coalescing import Replica, forget_namespace
from tests.support.redis_cluster import RedisTarget

ANSWER = CachedAnswer("A sampled answer.", "stop", 300, 4)
TTL_S = 120
KEY = IdempotencyKey("key-a", "8e03978e-40d5-43e8-bc93-6894a57f9324")


@pytest.fixture
def namespace() -> str:
    return f"test-idem-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(
    redis_target: RedisTarget, namespace: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    async with (
        Replica(redis_target, namespace, socket_timeout_s=2.0) as a,
        Replica(redis_target, namespace, socket_timeout_s=2.0) as b,
    ):
        yield a, b
    await forget_namespace(redis_target, namespace)


async def test_a_key_is_bound_to_its_first_body_for_the_window(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    a, b = replicas
    claims_a, claims_b = (Claims(r.redis, r.breaker, TTL_S) for r in (a, b))
    where = claim_key(namespace, KEY)
    await claims_a.claim(Claim(where, "digest-1"))
    await claims_b.claim(Claim(where, "digest-1"))  # the retry, on another replica
    with pytest.raises(GatewayError) as caught:
        await claims_b.claim(Claim(where, "digest-2"))
    assert (caught.value.status, caught.value.code) == (409, ErrorCode.IDEMPOTENCY_KEY_REUSED)
    assert 0 < await a.redis.ttl(where) <= TTL_S
    # the same idempotency key from another API key is a claim of its own
    theirs = claim_key(namespace, IdempotencyKey("key-b", KEY.key))
    await claims_a.claim(Claim(theirs, "digest-2"))


async def test_a_retry_on_another_replica_joins_then_finds_the_stored_answer(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    a, b = replicas
    key = answer_key(namespace, KEY, "digest-1")
    first = await a.coalescer.acquire(key)
    assert isinstance(first, Lead)
    retry = asyncio.create_task(b.coalescer.acquire(key))  # the client hung up, retried
    await asyncio.sleep(0.3)
    assert not retry.done(), "the retry must wait for the generation, not start its own"
    await a.coalescer.finish(first, ANSWER, store_ttl_s=TTL_S)
    joined = await asyncio.wait_for(retry, 10)
    # Woken by the leader's message, or (the message late on a cluster's node) finding the
    # stored answer when it looked again: the same answer either way, and no generation.
    assert isinstance(joined, Joined | Stored), joined
    assert joined.answer == ANSWER
    later = await b.coalescer.acquire(key)
    assert isinstance(later, Stored)
    assert later.answer == ANSWER
    assert 0 < await a.redis.ttl(key) <= TTL_S


async def test_a_failed_generation_is_not_kept_so_the_retry_generates(
    replicas: tuple[Replica, Replica], namespace: str
) -> None:
    a, b = replicas
    key = answer_key(namespace, KEY, "digest-1")
    first = await a.coalescer.acquire(key)
    assert isinstance(first, Lead)
    await a.coalescer.finish(first, None, store_ttl_s=None)  # the worker failed
    retry = await b.coalescer.acquire(key)
    assert isinstance(retry, Lead), retry
    await b.coalescer.finish(retry, ANSWER, store_ttl_s=TTL_S)


async def test_without_redis_the_claim_says_so() -> None:
    replica = Replica("redis://127.0.0.1:19901/0", "test-idem-down", socket_timeout_s=0.2)
    try:
        with pytest.raises(CacheUnavailable):
            await Claims(replica.redis, replica.breaker, TTL_S).claim(Claim("k", "d"))
    finally:
        await replica.redis.aclose()
        await replica.pubsub.aclose()
