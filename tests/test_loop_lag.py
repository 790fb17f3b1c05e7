"""Deadlines in time the event loop was responsive (gateway/loop_lag.py), and the Redis
breaker built on them: a stalled loop is excused, a silent dependency is not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.breaker import BreakerOpen, BreakerState
from gateway.loop_lag import DeadlineExceeded, LagAwareDeadline, LoopLag, LoopStalled
from gateway.redis_link import REDIS_FAILURES, redis_breaker


@pytest.fixture
async def lag() -> AsyncIterator[LoopLag]:
    monitor = LoopLag(interval_s=0.001)
    await monitor.start()
    await asyncio.sleep(0.02)
    yield monitor
    await monitor.stop()


def _stall(seconds: float) -> None:
    time.sleep(seconds)  # CPU work holding the loop


def _hold_loop(seconds: float, stall_s: float = 0.05) -> None:
    """Hold the loop for ``stall_s`` at a time, letting it run 1 ms in between, for about
    ``seconds``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds

    def stall() -> None:
        time.sleep(stall_s)
        if loop.time() < until:
            loop.call_later(0.001, stall)

    loop.call_soon(stall)


async def _answer_after(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "ok"


async def _never() -> str:
    await asyncio.Event().wait()
    return "never"


async def test_the_lag_counts_a_stall(lag: LoopLag) -> None:
    loop = asyncio.get_running_loop()
    before = lag.stalled(loop.time())
    _stall(0.2)
    during = lag.stalled(loop.time())  # the stall going on is counted before any tick
    await asyncio.sleep(0.02)
    after = lag.stalled(loop.time())
    assert during - before >= 0.15
    assert after - before >= 0.15


async def test_a_stall_past_the_deadline_does_not_time_out_an_answer(lag: LoopLag) -> None:
    deadline = LagAwareDeadline(0.05, lag, cap_s=2.0)
    loop = asyncio.get_running_loop()
    # The answer is due after 10 ms; the loop is held for 200 ms before it can read it.
    loop.call_later(0.001, time.sleep, 0.2)
    assert await deadline.run(lambda: _answer_after(0.01)) == "ok"


async def test_a_silent_dependency_times_out_within_the_deadline(lag: LoopLag) -> None:
    deadline = LagAwareDeadline(0.05, lag, cap_s=2.0)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await deadline.run(_never)
    assert 0.04 <= time.perf_counter() - started < 1.0


async def test_a_loop_stalled_past_the_cap_gives_up_as_loop_stalled(lag: LoopLag) -> None:
    deadline = LagAwareDeadline(0.05, lag, cap_s=0.4)
    _hold_loop(0.6)  # never 50 ms of responsive time within the cap
    with pytest.raises(LoopStalled):
        await deadline.run(_never)
    await asyncio.sleep(0.3)


async def test_the_callers_own_cancellation_is_not_a_timeout(lag: LoopLag) -> None:
    deadline = LagAwareDeadline(5.0, lag, cap_s=10.0)
    task = asyncio.create_task(deadline.run(_never))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_redis_breaker_opens_on_silence_not_on_one_late_read(lag: LoopLag) -> None:
    states: list[BreakerState] = []
    breaker = redis_breaker(0.05, 5.0, 2, lag, states.append)
    with pytest.raises(DeadlineExceeded):
        await breaker.call(_never, REDIS_FAILURES)
    assert breaker.state is BreakerState.CLOSED  # one timeout: not yet
    assert await breaker.call(lambda: _answer_after(0.001), REDIS_FAILURES) == "ok"
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            await breaker.call(_never, REDIS_FAILURES)
    assert states == [BreakerState.OPEN]
    with pytest.raises(BreakerOpen):
        await breaker.call(lambda: _answer_after(0.001), REDIS_FAILURES)


async def test_the_redis_breaker_does_not_count_the_loops_stalls(lag: LoopLag) -> None:
    breaker = redis_breaker(0.05, 5.0, 1, lag, lambda _: None)  # cap: 8 deadlines, 0.4 s
    for _ in range(2):
        _hold_loop(0.6)
        with pytest.raises(LoopStalled):
            await breaker.call(_never, REDIS_FAILURES)
        await asyncio.sleep(0.3)
    assert breaker.state is BreakerState.CLOSED
