"""Hot answers in this replica's memory, in front of Redis.

A viral product page asks the same question thousands of times a second; each hit in
Redis costs a round trip (tens of microseconds of the replica's CPU in the client, plus
Redis's own). Here a hit costs a dictionary lookup. The keys are the Redis keys (namespace,
format, model, checkpoint, scope: everything the answer depends on), so the two never
disagree about what a request may be answered with; the short TTL bounds how long an
answer outlives its Redis copy. Only answers the cache may store enter (the stage's
plan: no-store, refused, too large or partial answers never do); a lookup the client
skips (no-cache) never reads it. Every hit is still moderated, logged, limited and
counted by the pipeline like a Redis hit.

Bounded in bytes (the answer's encoded size plus its key), least recently used first out.
``clear()`` empties it when the workers' checkpoint changes: every key then changes, and
the old answers would only take up room until their TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from gateway.answers import CachedAnswer

# Per entry, besides the answer and key bytes: the dict slot, the tuple, the floats.
_ENTRY_OVERHEAD = 200


class _Entry(NamedTuple):
    answer: CachedAnswer
    expires: float
    size: int


class LocalAnswers:
    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        on_size: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._on_size = on_size  # the bytes held, after every change (a gauge)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self.delete(key)
            return None
        self._entries.move_to_end(key)
        return entry.answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        size = len(answer.encode()) + len(key) + _ENTRY_OVERHEAD
        if size > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(answer, self._clock() + self._ttl_s, size)
        self.bytes += size
        while self.bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used
        self._report()

    def delete(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)
            self._report()

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self._report()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        self.bytes -= self._entries.pop(key).size

    def _report(self) -> None:
        if self._on_size is not None:
            self._on_size(self.bytes)
