"""Generations that outlive their request.

A coalescing leader generates for its waiters too: its client leaving (common on mobile)
must not stop the generation, whose answer is stored and shared all the same.
``keep_going`` runs such work to its end even when the request's task is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

_R = TypeVar("_R")

# Generations that outlive their request: referenced until done.
_detached: set[asyncio.Task[Any]] = set()


async def keep_going(
    work: Coroutine[Any, Any, _R], orphan: Callable[[_R], None] | None = None
) -> _R:
    """Await ``work``, which runs to its end even when the caller is cancelled; then its
    result goes to ``orphan`` (an opened stream must still be read or closed)."""
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
