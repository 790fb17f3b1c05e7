"""The near-duplicate stage: after an exact miss, an answer stored for the same question
about the same photo in another encoding (docs/NEAR_DUPLICATES.md).

    probe    what the cache stage plans for a request: its group and its images
    find     signatures (a thread), candidates (index.py), verification (verify.py): the
             closest candidate whose every image verifies, or None
    index    a stored answer joins the index under its group, with its signatures

Only ``find`` is on a request's path, and only for a key that opted in; ``index`` runs
after the answer is stored (every cacheable answer, whichever key asked: an opted-in key
may then borrow any answer its scope may see). Every failure (Redis, an image Pillow
cannot read) ends the lookup as a miss, never as an error for the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson

from gateway.answers import CachedAnswer
from gateway.background import detach
from gateway.cache.near.index import Candidate, NearIndex
from gateway.cache.near.signature import ImageSignature, compute_signature
from gateway.cache.near.verify import Bounds, compare
from gateway.cache.store import CacheUnavailable
from gateway.metrics import Metrics
from gateway.validation.prepare import PreparedRequest

# Signatures of recently seen images, by digest: shoppers ask several questions about one
# photo. About 7 KB each.
SIGNATURE_MEMO: Final = 512


@dataclass(slots=True)
class NearProbe:
    """One request's part in the near-duplicate stage, planned with its cache key."""

    group: str
    prepared: PreparedRequest = field(repr=False)
    serve: bool  # the key opted in and the client did not say no-cache
    signatures: tuple[ImageSignature, ...] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NearMatch:
    answer: CachedAnswer
    answer_key: str  # the entry replayed
    distance: int  # the largest Hamming distance over the request's images

    @property
    def source(self) -> tuple[str, int]:
        """What the interaction log keeps: the replayed answer's digest and the distance."""
        digest = self.answer_key[self.answer_key.index("{") + 1 : self.answer_key.index("}")]
        return digest, self.distance


def _image_bytes(prepared: PreparedRequest) -> list[bytes]:
    """The images' bytes as the worker receives them: kept by the pixel check until it runs,
    else read back from the worker's body (already encoded on a miss)."""
    pending = prepared.pixels.images
    if pending and all(image.data is not None for image, _ in pending):
        return [image.data for image, _ in pending if image.data is not None]
    payload = orjson.loads(prepared.body)
    found = []
    for message in payload.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part["image_url"]["url"]
                found.append(base64.b64decode(url.split(",", 1)[1]))
    return found


class NearCache:
    def __init__(self, index: NearIndex, bounds: Bounds, candidates: int, metrics: Metrics) -> None:
        self._index = index
        self._bounds = bounds
        self._candidates = candidates
        self._metrics = metrics
        self._memo: OrderedDict[str, ImageSignature] = OrderedDict()

    async def signatures(self, probe: NearProbe) -> tuple[ImageSignature, ...]:
        """Every image's signature (a thread for those not in the memo). Raises ValueError
        for an image that does not decode."""
        if probe.signatures is not None:
            return probe.signatures
        digests = [image.sha256 for image in probe.prepared.images]
        known = [self._memo.get(digest) for digest in digests]
        if any(signature is None for signature in known):
            started = time.perf_counter()
            computed = await asyncio.to_thread(_compute_missing, probe.prepared, known)
            self._metrics.cache_near_signature_seconds.observe(time.perf_counter() - started)
            known = list(computed)
        signatures = tuple(s for s in known if s is not None)
        for digest, signature in zip(digests, signatures, strict=True):
            self._memo[digest] = signature
            self._memo.move_to_end(digest)
        while len(self._memo) > SIGNATURE_MEMO:
            self._memo.popitem(last=False)
        probe.signatures = signatures
        return signatures

    async def find(self, probe: NearProbe) -> NearMatch | None:
        """The closest stored answer of the probe's group whose every image verifies."""
        count = self._metrics.cache_near_lookups
        try:
            match, rejected = await self._find(probe)
        except (CacheUnavailable, ValueError):
            count.labels("error").inc()
            return None
        count.labels("similar" if match else "rejected" if rejected else "none").inc()
        return match

    async def _find(self, probe: NearProbe) -> tuple[NearMatch | None, bool]:
        signatures = await self.signatures(probe)
        if not signatures:
            return None, False
        first = signatures[0]
        candidates = await self._index.candidates(
            probe.group, first.bits, self._bounds.max_distance, self._candidates
        )
        entries = await self._index.read(candidates)
        for entry in entries:
            if isinstance(entry, Candidate):  # its answer expired: forget it, off the path
                detach(self._forget(probe.group, entry))
                continue
            if len(entry.signatures) != len(signatures):
                continue
            comparisons = [compare(q, s) for q, s in zip(signatures, entry.signatures, strict=True)]
            if all(c.within(self._bounds) for c in comparisons):
                distance = max(c.distance for c in comparisons)
                return NearMatch(entry.answer, entry.answer_key, distance), False
        return None, bool(candidates)

    async def _forget(self, group: str, candidate: Candidate) -> None:
        with contextlib.suppress(CacheUnavailable):
            await self._index.forget(group, candidate.answer_key, candidate.bits)

    async def index(self, probe: NearProbe, answer_key: str) -> None:
        """Add a stored answer to the index (after it is stored; never raises)."""
        try:
            signatures = await self.signatures(probe)
            if signatures:
                await self._index.add(probe.group, answer_key, signatures)
        except (CacheUnavailable, ValueError):
            self._metrics.cache_near_indexed.labels("failed").inc()
            return
        self._metrics.cache_near_indexed.labels("indexed").inc()


def _compute_missing(
    prepared: PreparedRequest, known: Sequence[ImageSignature | None]
) -> list[ImageSignature]:
    """Raises ValueError for any image that cannot be read back or decoded: this runs before
    the full decode check (validation/pixels.py), so corrupt images get here, and a
    recalled body (cache/recall.py) carries no worker body to read them from."""
    if all(signature is not None for signature in known):
        return [s for s in known if s is not None]
    try:
        images = _image_bytes(prepared)
    except Exception as exc:  # malformed JSON or data URI, or no worker body at all
        raise ValueError(f"the request's images could not be read back: {exc!r}") from None
    if len(images) != len(known):
        raise ValueError("the request's images could not be read back")
    compute: Callable[[bytes], ImageSignature] = compute_signature
    return [s if s is not None else compute(data) for s, data in zip(known, images, strict=True)]
