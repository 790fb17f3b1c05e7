"""Per-key rate limits end to end, on real Redis: requests per minute shared by two
gateways, tokens per minute charged for images, concurrency slots held by slow requests
and given back when a stream ends or its client leaves, leases that run out, and a Redis
outage failing open or closed as configured.

The limits run twice (``redis_target``): on the machine's Redis and on this session's
Redis Cluster, where every script of a key's limits must run in one slot."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from gateway.breaker import CircuitBreaker
from gateway.protocol import ErrorResponse
from gateway.ratelimit import ConcurrencyLimiter, RateLimitSettings
from gateway.ratelimit.scripts import lease_set_key
from gateway.redis_link import RedisClient, redis_client
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, key_id, keyed_gateway
from tests.support.images import data_uri, image_bytes
from tests.support.metrics import scrape
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import PrivateRedis
from tests.support.requests import chat_body, image_chat_body

CHAT = "/v1/chat/completions"
_DURATION = re.compile(r"(\d+m)?\d+(\.\d+)?s|\d+ms")


def assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.code, error.type) == ("rate_limit_exceeded", "rate_limit_error")
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 15.0) -> None:
    """Poll with a generous bound: these are facts that become true, not timings."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def redis(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    client = redis_client(*redis_target)
    yield client
    await client.aclose()


def on(target: RedisTarget) -> dict[str, Any]:
    """keyed_gateway's settings for the limits in ``target``. The socket timeout is
    generous: a loaded test machine must not turn these tests into fail-open drills."""
    return {
        "ratelimit": RateLimitSettings(socket_timeout_s=2.0),
        "redis_url": target.url,
        "redis_cluster": target.cluster,
    }


def slots(redis: RedisClient, namespace: str, key: str) -> Callable[[int], Awaitable[bool]]:
    async def count_is(expected: int) -> bool:
        used = await redis.zcard(lease_set_key(namespace, key_id(key)))
        return int(used) == expected

    return count_is


async def test_requests_per_minute_are_shared_by_replicas(
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
    redis_target: RedisTarget,
) -> None:
    key = create_key(log_database_url, "--rpm", "3")
    namespace = f"test-rpm-{uuid.uuid4().hex[:8]}"
    where = on(redis_target)
    async with (
        keyed_gateway(fake_worker.url, log_database_url, namespace=namespace, **where) as first,
        keyed_gateway(fake_worker.url, log_database_url, namespace=namespace, **where) as second,
    ):
        for url, remaining in ((first, 2), (second, 1), (first, 0)):
            ok = await http.post(url + CHAT, json=chat_body(), headers=bearer(key))
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert _DURATION.fullmatch(ok.headers["x-ratelimit-reset-requests"])
            assert int(ok.headers["x-ratelimit-limit-tokens"]) > 0
        refused = await http.post(second + CHAT, json=chat_body(), headers=bearer(key))
        assert_429(refused)
        assert refused.headers["x-ratelimit-limit-requests"] == "3"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert _DURATION.fullmatch(refused.headers["x-ratelimit-reset-requests"])
        # Another key has its own budget.
        other = create_key(log_database_url, "--rpm", "3")
        assert (await http.post(first + CHAT, json=chat_body(), headers=bearer(other))).is_success
        samples = await scrape(http, second)
        assert samples['gateway_rate_limited_total{limit="requests"}'] == 1
        assert samples['gateway_errors_total{code="rate_limit_exceeded"}'] == 1


async def test_tokens_per_minute_count_images(
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
    redis_target: RedisTarget,
) -> None:
    key = create_key(log_database_url, "--tpm", "1200")
    # 960 x 960 is 30 x 30 = 900 image tokens; "what is it?" is 4; its one message's
    # template 5; max_tokens 16: 925.
    photo = image_chat_body("what is it?", data_uri(image_bytes(size=(960, 960))), max_tokens=16)
    small = chat_body("hello", max_tokens=16)  # 2 + 5 + 16 = 23
    async with keyed_gateway(fake_worker.url, log_database_url, **on(redis_target)) as url:
        ok = await http.post(url + CHAT, json=small, headers=bearer(key))
        assert ok.headers["x-ratelimit-remaining-tokens"] == str(1200 - 23)
        ok = await http.post(url + CHAT, json=photo, headers=bearer(key))
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-remaining-tokens"] == str(1200 - 23 - 925)
        refused = await http.post(url + CHAT, json=photo, headers=bearer(key))
        assert_429(refused)
        assert refused.headers["x-ratelimit-limit-tokens"] == "1200"
        assert refused.headers["x-ratelimit-remaining-tokens"] == str(1200 - 23 - 925)
        assert "tokens" in refused.json()["error"]["message"]
        # A refusal charges nothing: a small request still fits.
        assert (await http.post(url + CHAT, json=small, headers=bearer(key))).is_success
        samples = await scrape(http, url)
        assert samples['gateway_rate_limited_total{limit="tokens"}'] == 1


async def test_concurrency_slots_are_held_and_given_back(
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
    redis: RedisClient,
    redis_target: RedisTarget,
) -> None:
    key = create_key(log_database_url, "--concurrent", "1")
    namespace = f"test-conc-{uuid.uuid4().hex[:8]}"
    in_use = slots(redis, namespace, key)
    where = on(redis_target)
    async with keyed_gateway(
        fake_worker.url, log_database_url, namespace=namespace, **where
    ) as url:
        slow = asyncio.create_task(
            http.post(url + CHAT, json=chat_body("fake:sleep:1.5"), headers=bearer(key))
        )
        await until(lambda: in_use(1))
        assert_429(await http.post(url + CHAT, json=chat_body(), headers=bearer(key)))
        assert (await slow).status_code == 200
        await until(lambda: in_use(0))

        # A stream holds its slot until its last byte, then gives it back.
        body = chat_body("fake:pace:20:5", stream=True)
        async with http.stream("POST", url + CHAT, json=body, headers=bearer(key)) as stream:
            assert stream.status_code == 200
            assert stream.headers["x-ratelimit-limit-requests"]
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            assert await in_use(1)
            assert_429(await http.post(url + CHAT, json=chat_body(), headers=bearer(key)))
            events = [line async for line in lines if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
        await until(lambda: in_use(0))

        # A client that leaves mid-stream gives its slot back too.
        body = chat_body("fake:stall:2", stream=True)
        async with http.stream("POST", url + CHAT, json=body, headers=bearer(key)) as stream:
            assert stream.status_code == 200
            await anext(stream.aiter_lines())
            assert await in_use(1)
        await until(lambda: in_use(0))
        last = await http.post(url + CHAT, json=chat_body(), headers=bearer(key))
        assert last.is_success
        samples = await scrape(http, url)
        assert samples['gateway_rate_limited_total{limit="concurrent"}'] == 2
        # Four admitted requests used request units; the two refused for concurrency did not.
        limit = int(last.headers["x-ratelimit-limit-requests"])
        assert int(last.headers["x-ratelimit-remaining-requests"]) == limit - 4


async def test_a_slot_taken_on_one_replica_is_taken_on_the_other(
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
    redis: RedisClient,
    redis_target: RedisTarget,
) -> None:
    key = create_key(log_database_url, "--concurrent", "1")
    namespace = f"test-conc2-{uuid.uuid4().hex[:8]}"
    in_use = slots(redis, namespace, key)
    where = on(redis_target)
    async with (
        keyed_gateway(fake_worker.url, log_database_url, namespace=namespace, **where) as first,
        keyed_gateway(fake_worker.url, log_database_url, namespace=namespace, **where) as second,
    ):
        slow = asyncio.create_task(
            http.post(first + CHAT, json=chat_body("fake:sleep:1.5"), headers=bearer(key))
        )
        await until(lambda: in_use(1))
        assert_429(await http.post(second + CHAT, json=chat_body(), headers=bearer(key)))
        assert (await slow).status_code == 200
        await until(lambda: in_use(0))
        assert (await http.post(second + CHAT, json=chat_body(), headers=bearer(key))).is_success


async def test_every_keys_leases_are_renewed(redis: RedisClient) -> None:
    namespace = f"test-renew-{uuid.uuid4().hex[:8]}"
    limiter = ConcurrencyLimiter(redis, namespace, CircuitBreaker(1.0), lease_ttl_s=30)
    ids = [f"key{n}" for n in range(6)]
    lease_sets = [lease_set_key(namespace, api_key) for api_key in ids]
    # On a cluster their lease sets lie in several slots: one script for all is CROSSSLOT.
    assert len({key_slot(name.encode()) for name in lease_sets}) > 1
    expiries: dict[str, tuple[str, float | None]] = {}
    for api_key, name in zip(ids, lease_sets, strict=True):
        lease, _ = await limiter.acquire(api_key, 2)
        assert lease is not None
        expiries[name] = (lease, await redis.zscore(name, lease))
    await asyncio.sleep(0.01)  # Redis' clock moves on: a renewed lease expires later
    await limiter.renew()
    for name, (lease, expiry) in expiries.items():
        assert expiry is not None
        assert (await redis.zscore(name, lease) or 0) > expiry


async def test_leases_of_a_dead_replica_run_out_and_live_ones_are_renewed(
    redis: RedisClient,
) -> None:
    namespace = f"test-lease-{uuid.uuid4().hex[:8]}"
    # Two limiters stand for two replicas; the first never renews, as if it had crashed.
    dead = ConcurrencyLimiter(redis, namespace, CircuitBreaker(1.0), lease_ttl_s=0.5)
    lease, _ = await dead.acquire("key", 1)
    assert lease is not None
    live = ConcurrencyLimiter(redis, namespace, CircuitBreaker(1.0), lease_ttl_s=1.0)
    assert (await live.acquire("key", 1))[0] is None

    async def acquired() -> bool:
        return (await live.acquire("key", 1))[0] is not None

    await until(acquired)
    # The live replica renews its lease: it outlasts several TTLs while renewed.
    for _ in range(25):
        await live.renew()
        assert (await dead.acquire("key", 1))[0] is None
        await asyncio.sleep(0.1)


async def test_a_redis_outage_fails_open_or_closed_as_configured(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    key = create_key(log_database_url, "--rpm", "1000")
    tight = create_key(log_database_url, "--rpm", "2")
    fail_open = RateLimitSettings(redis_url=private.url, breaker_open_s=0.5)
    fail_closed = fail_open.model_copy(update={"fail_open": False})
    try:
        async with (
            keyed_gateway(fake_worker.url, log_database_url, ratelimit=fail_open) as open_,
            keyed_gateway(fake_worker.url, log_database_url, ratelimit=fail_closed) as closed,
        ):
            for url in (open_, closed):
                ok = await http.post(url + CHAT, json=chat_body(), headers=bearer(key))
                assert ok.headers["x-ratelimit-limit-requests"] == "1000"
            private.kill()
            for _ in range(3):  # the breaker's window included
                passed = await http.post(open_ + CHAT, json=chat_body(), headers=bearer(key))
                assert passed.status_code == 200
                # Counted by this replica alone meanwhile.
                assert passed.headers["x-ratelimit-limit-requests"] == "1000"
                refused = await http.post(closed + CHAT, json=chat_body(), headers=bearer(key))
                assert refused.status_code == 503, refused.text
                error = ErrorResponse.model_validate_json(refused.content).error
                assert error.code == "rate_limiter_unavailable"
                assert int(refused.headers["retry-after"]) >= 1
            # Failing open is not unlimited: this replica holds each key to its own limits.
            statuses = [
                (await http.post(open_ + CHAT, json=chat_body(), headers=bearer(tight))).status_code
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429]
            # No key, no pass: authentication does not depend on Redis.
            assert (await http.post(open_ + CHAT, json=chat_body())).status_code == 401
            samples = await scrape(http, open_)
            assert samples['gateway_rate_limiter_errors_total{limit="requests"}'] >= 3

            private.start()  # same port: the breaker's probe finds it back

            async def closed_recovered() -> bool:
                again = await http.post(closed + CHAT, json=chat_body(), headers=bearer(key))
                return again.status_code == 200

            await until(closed_recovered)
    finally:
        private.stop()
