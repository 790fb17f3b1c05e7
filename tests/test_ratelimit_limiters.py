"""The rate limiters without a gateway: the Redis counters (the machine's Redis, a
namespace of the test's own), the in-memory fallback a replica uses while Redis cannot be
asked, and Retry-After. (Through gateways, with keys: tests/test_ratelimit_http.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.breaker import CircuitBreaker
from gateway.ratelimit import ConcurrencyLimiter, Window, WindowLimiter, retry_after_s
from tests.support.coalescing import SHARED_REDIS, forget_namespace


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"test-rl-{uuid.uuid4().hex[:8]}"
    yield name
    await forget_namespace(SHARED_REDIS, name)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(SHARED_REDIS)
    yield client
    await client.aclose()


def _limiters(redis: Redis, namespace: str) -> tuple[WindowLimiter, ConcurrencyLimiter]:
    breaker = CircuitBreaker(open_seconds=5.0)
    return (
        WindowLimiter(redis, namespace, breaker),
        ConcurrencyLimiter(redis, namespace, breaker, lease_ttl_s=30.0),
    )


async def test_admission_and_the_plain_limiter_charge_one_requests_window(
    redis: Redis, namespace: str
) -> None:
    # The slot and the request unit go in one script; when Redis failed it, the unit is
    # charged alone (admission.py): both must count against the same window.
    windows, slots = _limiters(redis, namespace)
    lease, window = await slots.admit("key-a", 4, requests_per_minute=2)
    assert lease is not None
    assert window is not None
    assert (window.kind, window.remaining) == ("requests", 1)
    assert (await windows.hit("requests", "key-a", 2)).remaining == 0
    assert not (await windows.hit("requests", "key-a", 2)).allowed
    lease, window = await slots.admit("key-a", 4, requests_per_minute=2)
    assert lease is None
    assert window is not None
    assert not window.allowed


async def test_local_slots_count_per_key_up_to_the_limit_and_come_back(
    redis: Redis, namespace: str
) -> None:
    _, slots = _limiters(redis, namespace)
    first, in_use = slots.acquire_locally("key-a", 2)
    assert first is not None
    assert in_use == 1
    second, in_use = slots.acquire_locally("key-a", 2)
    assert second is not None
    assert in_use == 2
    assert slots.acquire_locally("key-a", 2) == (None, 2)  # full
    assert slots.acquire_locally("key-b", 2)[0] is not None  # another key's slots
    await slots.release(first)
    again, in_use = slots.acquire_locally("key-a", 2)
    assert again is not None
    assert in_use == 2
    assert slots.acquire_locally("key-a", 2)[0] is None


async def test_local_windows_charge_the_cost_per_key_and_per_kind(
    redis: Redis, namespace: str
) -> None:
    windows, _ = _limiters(redis, namespace)
    window = await windows.hit_locally("tokens", "key-a", 100, cost=60)
    assert (window.kind, window.allowed, window.limit, window.remaining) == (
        "tokens", True, 100, 40,
    )  # fmt: skip
    assert 0 < window.reset_s <= 60
    refused = await windows.hit_locally("tokens", "key-a", 100, cost=60)
    assert (refused.allowed, refused.remaining) == (False, 40)
    assert (await windows.hit_locally("tokens", "key-b", 100, cost=60)).allowed  # its own
    requests = await windows.hit_locally("requests", "key-a", 100)  # its own; one unit
    assert (requests.kind, requests.allowed, requests.remaining) == ("requests", True, 99)


async def test_a_local_windows_reset_is_read_to_the_fraction_of_a_second(
    redis: Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory storage's windows are aligned on the clock's minutes: half a second
    # before one ends, its counter resets in half a second.
    windows, _ = _limiters(redis, namespace)
    minute = (time.time() // 60 + 1) * 60
    monkeypatch.setattr(time, "time", lambda: minute + 59.5)
    window = await windows.hit_locally("requests", "key-a", 10)
    monkeypatch.undo()
    assert window.reset_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("limit", "cost", "reset_s", "expected"),
    [
        (10, 10, 5.0, 5),  # the whole budget fits in an empty window: wait for room
        (10, 11, 5.0, 60),  # never fits: the window's length
        (10, 1, 0.2, 1),  # at least a second
        (10, 1, 1.5, 2),  # rounded up
        (10, 1, 75.0, 60),  # at most the window
    ],
)
def test_retry_after(limit: int, cost: int, reset_s: float, expected: int) -> None:
    window = Window("tokens", False, limit, 0, reset_s)
    assert retry_after_s(window, cost) == expected
