"""The lifespan's background tasks (health polling, key refresh, lease renewal, the
coalescing listener) all stop the same way; work that outlives its request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

_R = TypeVar("_R")


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished; None is already stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# Work that outlives its request (keep_going, detach): referenced until done.
_detached: set[asyncio.Future[Any]] = set()


async def keep_going(
    work: Coroutine[Any, Any, _R], orphan: Callable[[_R], None] | None = None
) -> _R:
    """Await ``work``, which runs to its end even when the caller is cancelled; then its
    result goes to ``orphan`` (an opened stream must still be read or closed, a lease won
    for a request that is gone released)."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if orphan is not None:
            task.add_done_callback(partial(_hand_over, orphan))
        raise


def _hand_over(orphan: Callable[[_R], None], task: asyncio.Future[_R]) -> None:
    if not task.cancelled() and task.exception() is None:
        orphan(task.result())


def detach(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end in the background."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
