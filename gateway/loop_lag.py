"""How late this replica's event loop runs, and deadlines that do not count its stalls.

A deadline on a Redis round trip is a timer on the same event loop that reads the answer.
When the loop is held (a burst of requests, a large body, the log writer catching up), an
answer that arrived in a millisecond is read only after the stall, and a plain timer has
fired by then: a healthy Redis looked like a timeout, its breaker opened for seconds, and
every request bypassed the cache, which loaded the workers, which held the loop longer.

``LoopLag`` keeps a tick every ``interval_s`` and adds up how late the ticks come: the
time the loop could not serve anyone. ``LagAwareDeadline`` runs an operation against a
deadline counted in time the loop was *responsive*: when its timer fires, the stalled
time since the operation began is added back, and only a wait the loop's own lag does not
explain is a timeout (``DeadlineExceeded``, which counts against the dependency). A
loop stalled past ``cap_s`` of wall time gives up with ``LoopStalled``, which a circuit
breaker does not count: the replica is sick, not Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """No answer within the deadline, counted in time the event loop was responsive."""


class LoopStalled(TimeoutError):
    """No answer within the wall-clock cap, but the event loop's own stalls explain the
    wait: not the dependency's fault, so circuit breakers do not count it."""


class LoopLag:
    """The event loop's accumulated lateness, from a tick every ``interval_s``."""

    def __init__(
        self, interval_s: float = 0.01, on_late: Callable[[float], None] | None = None
    ) -> None:
        self._interval = interval_s
        self._on_late = on_late  # each late tick's lateness (a metric)
        self._late_total = 0.0
        self._last_tick: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._last_tick = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._tick_forever(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stalled(self, now: float) -> float:
        """Seconds the loop has been late so far, the stall going on now included."""
        if self._last_tick is None:  # not started: no lag is known, none is excused
            return 0.0
        ongoing = now - self._last_tick - self._interval
        return self._late_total + (ongoing if ongoing > 0 else 0.0)

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            now = loop.time()
            self._last_tick = now
            if now > due:
                self._late_total += now - due
                if self._on_late is not None:
                    self._on_late(now - due)


class LagAwareDeadline:
    """Run operations within ``seconds`` of responsive time, ``cap_s`` of wall time."""

    def __init__(self, seconds: float, lag: LoopLag | None, cap_s: float) -> None:
        self.seconds = seconds
        self._lag = lag
        self._cap_s = max(cap_s, seconds)

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        started = loop.time()
        stalled_before = self._lag.stalled(started) if self._lag is not None else 0.0
        cancelling = task.cancelling()
        expired: list[type[TimeoutError]] = []

        def expire() -> None:
            now = loop.time()
            excused = self._lag.stalled(now) - stalled_before if self._lag is not None else 0.0
            responsive = now - started - excused
            if responsive < self.seconds and now - started < self._cap_s:
                # The loop was held: the answer may be waiting in the socket. Wait for
                # the rest of the deadline, in responsive time.
                rest = min(self.seconds - responsive, started + self._cap_s - now)
                handle[0] = loop.call_at(now + rest, expire)
                return
            expired.append(LoopStalled if responsive < self.seconds else DeadlineExceeded)
            task.cancel()

        handle = [loop.call_at(started + self.seconds, expire)]
        try:
            return await operation()
        except asyncio.CancelledError:
            if expired and task.uncancel() <= cancelling:
                raise expired[0](f"no answer within {self.seconds} s") from None
            raise
        finally:
            handle[0].cancel()
