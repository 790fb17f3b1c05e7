"""A circuit breaker for a dependency we can live without (Redis).

Closed: calls go through. A failure (timeout, connection error) opens it: for
`open_seconds` every call fails fast without touching the dependency, so a dead
or hung Redis costs one timeout per window instead of one per request. After the
window one probe call is let through (half-open); its success closes the
breaker, its failure opens it for another window. Recovery is automatic.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Deadline = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class BreakerOpen(Exception):
    """The call was not attempted: the breaker is open."""


class CircuitBreaker:
    def __init__(
        self,
        open_seconds: float,
        failure_threshold: int = 1,
        on_state_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        deadline: Deadline | None = None,
        excused: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._open_seconds = open_seconds
        self._deadline = deadline
        self._excused = excused
        self._failure_threshold = failure_threshold
        self._on_state_change = on_state_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._window_over():
            return BreakerState.HALF_OPEN
        return self._state

    def _window_over(self) -> bool:
        return self._clock() - self._opened_at >= self._open_seconds

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_state_change is not None:
                self._on_state_change(state)

    async def call(
        self, operation: Callable[[], Awaitable[T]], failures: tuple[type[BaseException], ...]
    ) -> T:
        """Run operation unless the breaker is open; exceptions in `failures` count
        against the dependency and are re-raised, others pass through uncounted."""
        probing = False
        if self._state is BreakerState.OPEN:
            if not self._window_over() or self._probe_in_flight:
                raise BreakerOpen
            self._set(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN:
            if self._probe_in_flight:
                raise BreakerOpen
            self._probe_in_flight = probing = True
        try:
            if self._deadline is None:
                result = await operation()
            else:
                result = await self._deadline(operation)
        except self._excused:
            raise  # not the dependency's failure
        except failures:
            self._record_failure()
            raise
        finally:
            if probing:
                self._probe_in_flight = False
        self._failures = 0
        self._set(BreakerState.CLOSED)
        return result

    def _record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)
