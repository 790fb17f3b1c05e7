"""The rate limiters without a gateway: the Redis counters (the machine's Redis, a
namespace of the test's own), the in-memory fallback a replica uses while Redis cannot be
asked, and Retry-After. (Through gateways, with keys: tests/test_ratelimit_http.py.)"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.breaker import CircuitBreaker
from gateway.ratelimit import ConcurrencyLimiter, Window, WindowLimiter, retry_after_s
from gateway.ratelimit.scripts import lease_set_key
from gateway.ratelimit.windows import window_from_reply
from tests.support.coalescing import SHARED_REDIS, forget_namespace
from tests.support.redis_server import PrivateRedis

RENEWAL = "ratelimit-lease-renewal"  # the renewal task's name, as task dumps show it


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
    window = await windows.hit("requests", "key-a", 2)
    assert (window.kind, window.remaining) == ("requests", 0)
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


async def test_local_slots_given_back_one_at_a_time(redis: Redis, namespace: str) -> None:
    _, slots = _limiters(redis, namespace)
    leases = [slots.acquire_locally("key-a", 3)[0] for _ in range(3)]
    assert None not in leases
    await slots.release(str(leases[0]))
    await slots.release(str(leases[0]))  # a second release of the same lease: no effect
    await slots.release("never-issued")
    assert slots.acquire_locally("key-a", 3)[1] == 3
    assert slots.acquire_locally("key-a", 3)[0] is None


def _renewal_running() -> bool:
    return any(t.get_name() == RENEWAL and not t.done() for t in asyncio.all_tasks())


async def test_leases_are_renewed_while_held_and_lapse_once_renewal_stops(
    redis: Redis, namespace: str
) -> None:
    slots = ConcurrencyLimiter(redis, namespace, CircuitBreaker(5.0), lease_ttl_s=3.0)
    await slots.stop()  # before start: nothing to stop
    key = lease_set_key(namespace, "key-a")
    lease, _ = await slots.acquire("key-a", 1)
    assert lease is not None
    await slots.start()
    assert _renewal_running()
    try:
        await asyncio.sleep(4.0)  # past the lease's 3 s: only renewals kept it
        assert await redis.zcard(key) == 1
        assert (await slots.acquire("key-a", 1))[0] is None
    finally:
        await slots.stop()
    assert not _renewal_running()
    await slots.release(lease)
    assert await redis.zcard(key) == 0


async def test_a_redis_outage_is_logged_by_renewal_and_harmless_to_release(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    slots = ConcurrencyLimiter(client, "drill", CircuitBreaker(60.0), lease_ttl_s=3.0)
    try:
        lease, _ = await slots.acquire("key-a", 1)
        assert lease is not None
        server.stop()
        await slots.start()
        with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
            for _ in range(100):  # the first renewal comes after a third of the lease
                if caplog.records:
                    break
                await asyncio.sleep(0.05)
        assert caplog.records[0].getMessage() == (
            "concurrency lease renewal failed; leases may lapse"
        )
        await slots.release(lease)  # Redis away: the lease will run out by itself
    finally:
        await slots.stop()
        await client.aclose()
        server.stop()


@pytest.mark.parametrize(
    ("reply", "remaining", "reset_s"),
    [
        # {allowed, previous count, its ttl ms, current count, its ttl ms}
        ([1, 0, 0, 0, 0], 10, 0.0),  # nothing counted: no reset to wait for
        ([1, 0, 0, 3, 95_500], 7, 35.5),  # the current unit leaves in 95.5 % 60 s
        # The last minute's 6 weigh 34/60 (3.4); the next of them leaves in 34 % 10 s.
        ([0, 6, 34_000, 4, 110_000], 3, 4.0),
    ],
)
def test_a_charge_scripts_reply_reads_as_limits_computes_it(
    reply: list[int], remaining: int, reset_s: float
) -> None:
    window = window_from_reply("tokens", 10, reply)
    assert (window.kind, window.allowed, window.limit) == ("tokens", bool(reply[0]), 10)
    assert window.remaining == remaining
    assert window.reset_s == pytest.approx(reset_s, abs=1e-9)


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
