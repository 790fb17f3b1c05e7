"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from gateway.breaker import BreakerOpen, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Dependency:
    def __init__(self) -> None:
        self.calls = 0
        self.healthy = True

    async def __call__(self) -> str:
        self.calls += 1
        if not self.healthy:
            raise TimeoutError
        return "ok"


async def test_one_failure_opens_and_later_calls_fail_fast_until_the_window_ends() -> None:
    clock, dep = Clock(), Dependency()
    states: list[BreakerState] = []
    breaker = CircuitBreaker(5.0, clock=clock, on_state_change=states.append)
    dep.healthy = False
    with pytest.raises(TimeoutError):
        await breaker.call(dep, (TimeoutError,))
    assert breaker.state.name == "OPEN"
    for _ in range(100):
        with pytest.raises(BreakerOpen):
            await breaker.call(dep, (TimeoutError,))
    assert dep.calls == 1, "an open breaker must not touch the dependency"
    clock.now = 4.9
    with pytest.raises(BreakerOpen):
        await breaker.call(dep, (TimeoutError,))
    assert states == [BreakerState.OPEN]


async def test_half_open_probe_success_closes() -> None:
    clock, dep = Clock(), Dependency()
    breaker = CircuitBreaker(5.0, clock=clock)
    dep.healthy = False
    with pytest.raises(TimeoutError):
        await breaker.call(dep, (TimeoutError,))
    clock.now = 5.0
    assert breaker.state.name == "HALF_OPEN"
    dep.healthy = True
    assert await breaker.call(dep, (TimeoutError,)) == "ok"
    assert breaker.state.name == "CLOSED"
    assert await breaker.call(dep, (TimeoutError,)) == "ok"


async def test_half_open_probe_failure_reopens_for_a_new_window() -> None:
    clock, dep = Clock(), Dependency()
    breaker = CircuitBreaker(5.0, clock=clock)
    dep.healthy = False
    with pytest.raises(TimeoutError):
        await breaker.call(dep, (TimeoutError,))
    clock.now = 6.0
    with pytest.raises(TimeoutError):
        await breaker.call(dep, (TimeoutError,))
    assert breaker.state.name == "OPEN"
    clock.now = 10.9
    with pytest.raises(BreakerOpen):
        await breaker.call(dep, (TimeoutError,))
    assert dep.calls == 2


async def test_only_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1.0, clock=clock)
    release = asyncio.Event()

    async def fail() -> None:
        raise ConnectionError

    async def slow_probe() -> str:
        await release.wait()
        return "ok"

    with pytest.raises(ConnectionError):
        await breaker.call(fail, (ConnectionError,))
    clock.now = 2.0
    probe = asyncio.create_task(breaker.call(slow_probe, (ConnectionError,)))
    await asyncio.sleep(0)
    with pytest.raises(BreakerOpen):
        await breaker.call(slow_probe, (ConnectionError,))
    release.set()
    assert await probe == "ok"
    assert breaker.state.name == "CLOSED"


async def test_threshold_counts_consecutive_failures_and_other_errors_do_not_count() -> None:
    breaker = CircuitBreaker(5.0, failure_threshold=3, clock=Clock())

    async def bad_value() -> None:
        raise ValueError("not a Redis failure")

    async def timeout() -> None:
        raise TimeoutError

    for _ in range(5):
        with pytest.raises(ValueError, match="not a Redis failure"):
            await breaker.call(bad_value, (TimeoutError,))
    assert breaker.state.name == "CLOSED"
    dep = Dependency()
    # Two failures, a success, two failures: never three in a row, so it stays closed.
    for _ in range(2):
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await breaker.call(timeout, (TimeoutError,))
        assert breaker.state.name == "CLOSED"
        assert await breaker.call(dep, (TimeoutError,)) == "ok"
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await breaker.call(timeout, (TimeoutError,))
    assert breaker.state.name == "CLOSED"
    with pytest.raises(TimeoutError):
        await breaker.call(timeout, (TimeoutError,))
    assert breaker.state.name == "OPEN"
    with pytest.raises(BreakerOpen):
        await breaker.call(dep, (TimeoutError,))
    assert dep.calls == 2


async def test_a_breaker_recovers_from_every_outage_not_only_the_first() -> None:
    clock, dep = Clock(), Dependency()
    breaker = CircuitBreaker(5.0, clock=clock)
    dep.healthy = False
    with pytest.raises(TimeoutError):
        await breaker.call(dep, (TimeoutError,))
    clock.now = 5.0
    with pytest.raises(TimeoutError):  # a failed probe: a new window
        await breaker.call(dep, (TimeoutError,))
    clock.now = 10.0
    dep.healthy = True
    assert await breaker.call(dep, (TimeoutError,)) == "ok"  # the next window's probe
    dep.healthy = False
    with pytest.raises(TimeoutError):  # a second outage
        await breaker.call(dep, (TimeoutError,))
    clock.now = 15.0
    dep.healthy = True
    assert await breaker.call(dep, (TimeoutError,)) == "ok"
    assert breaker.state.name == "CLOSED"


async def test_a_call_from_before_the_outage_does_not_end_the_probe() -> None:
    # A call that started while the breaker was closed and ends (uncounted) while a probe
    # is out must not let a second probe through.
    clock = Clock()
    breaker = CircuitBreaker(1.0, clock=clock)
    finish_early, finish_probe = asyncio.Event(), asyncio.Event()

    async def early() -> None:
        await finish_early.wait()
        raise ValueError("not a Redis failure")

    async def probe() -> str:
        await finish_probe.wait()
        return "ok"

    async def fail() -> None:
        raise ConnectionError

    started = asyncio.create_task(breaker.call(early, (ConnectionError,)))
    await asyncio.sleep(0)
    with pytest.raises(ConnectionError):
        await breaker.call(fail, (ConnectionError,))
    clock.now = 2.0
    probing = asyncio.create_task(breaker.call(probe, (ConnectionError,)))
    await asyncio.sleep(0)
    finish_early.set()
    with pytest.raises(ValueError, match="not a Redis failure"):
        await started
    with pytest.raises(BreakerOpen):
        async with asyncio.timeout(5):  # a second probe would wait here
            await breaker.call(probe, (ConnectionError,))
    finish_probe.set()
    assert await probing == "ok"
    assert breaker.state.name == "CLOSED"
