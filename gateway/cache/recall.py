"""Requests this replica has prepared before, recalled by the bytes of their body.

A cache hit used to cost a miss's validation: parse the JSON, type it, decode and hash
every image, encode the canonical request, derive the key. The same body bytes on the same
endpoint always prepare into the same request (the settings are fixed, and the model
they name is checked to be served still), so once a body's answer is in the cache its
prepared request is kept here, and the next identical body skips all of that: a CRC-32
of its bytes and a comparison with the body the entry was made from (equal bytes, never a
lookalike) replace the whole preparation.

What a recalled hit still does, as any hit: authentication, the key's model permission
and limits (requests, tokens, concurrency), prompt moderation, the lookup (so the key's
own cache scope and the pool's checkpoint still decide), moderation of the answer, the
log row, the metrics. A recalled request whose answer is no longer cached is prepared
again from its bytes before a worker sees it: an entry holds no worker body and no
pixels, only what a hit needs. Bodies with remote image URLs are never kept (what the URL
serves may change).

Only bodies whose answer was found in the cache enter (a one-off question never does),
bounded in bytes, the least recently recalled out first.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from gateway.config import Settings
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.remote_images import RemoteImageFetcher
from gateway.validation.encode import WorkerJSON
from gateway.validation.pixels import PixelCheck
from gateway.validation.prepare import PreparedRequest, prepare_chat, prepare_vqa

_ENTRY_OVERHEAD: Final = 2048  # the prepared request's objects besides its texts
Reparse = Callable[[], Awaitable[ChatCompletionRequest | VQARequest]]


class _NoWorkerBody(WorkerJSON):
    """A recalled request carries no worker body: it is prepared again before a worker."""

    def __init__(self) -> None:
        super().__init__({}, None)

    def encoded(self) -> bytes:
        raise RuntimeError("a recalled request must be prepared again before a worker sees it")


_NO_WORKER_BODY: Final = _NoWorkerBody()


@dataclass(frozen=True, slots=True)
class Recalled:
    """A body prepared before: what a cache hit needs of it, and its answer's form."""

    prepared: PreparedRequest  # no worker body, no pixels
    vqa: bool  # the simple shape: {"text": ...}

    @property
    def stream(self) -> bool:
        return self.prepared.stream


@dataclass(slots=True)
class Recall:
    """One request body's place here: what it was prepared into before (``found``), or how
    to keep it once it is prepared; and how to parse it again when a worker must see it."""

    key: tuple[str, int, int]
    raw: bytes
    reparse: Reparse
    found: Recalled | None = None
    keepable: bool = True  # False: remote images

    async def prepare_again(
        self, settings: Settings, known: frozenset[str], fetcher: RemoteImageFetcher | None
    ) -> PreparedRequest:
        """The whole prepared request, worker body included, from the body's bytes."""
        request = await self.reparse()
        if isinstance(request, VQARequest):
            return await prepare_vqa(request, settings, known, fetcher)
        return await prepare_chat(request, settings, known, fetcher)


@dataclass(frozen=True, slots=True)
class _Entry:
    raw: bytes
    recalled: Recalled
    size: int


class RecalledRequests:
    def __init__(self, max_bytes: int, on_size: Callable[[int], None] | None = None) -> None:
        self._max_bytes = max_bytes
        self._on_size = on_size
        self._entries: OrderedDict[tuple[str, int, int], _Entry] = OrderedDict()
        self.bytes = 0

    def recall(
        self, path: str, raw: bytes, reparse: Reparse, served: Callable[[], frozenset[str]]
    ) -> Recall:
        """The body's Recall: ``found`` when it was prepared before and its model is still
        ``served``."""
        key = (path, len(raw), zlib.crc32(raw))
        recall = Recall(key, raw, reparse)
        entry = self._entries.get(key)
        # Equal bytes, not only an equal checksum; and a model still served.
        if entry is not None and entry.raw == raw and entry.recalled.prepared.model in served():
            self._entries.move_to_end(key)
            recall.found = entry.recalled
        return recall

    def keep(self, recall: Recall, prepared: PreparedRequest, vqa: bool) -> None:
        """Keep a body prepared in full whose answer was found in the cache."""
        if recall.found is not None or not recall.keepable:
            return
        size = len(recall.raw) + len(prepared.canonical) + 2 * len(prepared.prompt)
        size += _ENTRY_OVERHEAD
        if size > self._max_bytes:
            return
        light = dataclasses.replace(prepared, worker_json=_NO_WORKER_BODY, pixels=PixelCheck())
        old = self._entries.pop(recall.key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[recall.key] = _Entry(recall.raw, Recalled(light, vqa), size)
        self.bytes += size
        while self.bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.size
        if self._on_size is not None:
            self._on_size(self.bytes)

    def __len__(self) -> int:
        return len(self._entries)
