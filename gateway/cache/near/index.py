"""The near-duplicate index in Redis: candidates by multi-index hashing, never a scan.

A stored answer's first image has a 256-bit hash; the hash is cut into 16 chunks of 16
bits, and the answer is a member of one set per chunk: ``<ns>:v1:near:{<group>}:<i>:<chunk>``.
Two hashes within Hamming distance 31 differ in at most one bit in some chunk (16 chunks,
at most 31 bits: some chunk has fewer than two), so a lookup reads, for every chunk, the
set of its own value and of the 16 values one bit away: 272 sets, in ONE ``SUNION``
(every key of a group carries the group's hash tag, so they share a Redis Cluster slot).
Members are ``<answer digest>:<hash>``: the exact distance is computed here from the
member alone, and only the closest few candidates are read in full.

A candidate's full signatures (every image's hash and thumbnails, about 7 KB each) are
kept beside its answer, under the answer key's own hash tag (``<answer key>:near``); the
answer itself stays where the exact cache put it. Both expire with the answer (the same
TTL); a chunk set's TTL is renewed by every answer added to it, and a member whose answer
has expired is removed from its sets when a lookup finds it gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.answers import CachedAnswer
from gateway.breaker import CircuitBreaker
from gateway.cache.keys import CACHE_FORMAT_VERSION
from gateway.cache.near.signature import HASH_BYTES, SIGNATURE_BYTES, ImageSignature, hamming
from gateway.cache.store import guarded
from gateway.redis_link import RedisClient

CHUNKS: Final = 16
CHUNK_BITS: Final = HASH_BYTES * 8 // CHUNKS
# The largest distance the probes are sure to find (one bit flipped per chunk).
GUARANTEED_DISTANCE: Final = 2 * CHUNKS - 1
_DIGEST_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Candidate:
    answer_key: str
    distance: int  # of the first image
    bits: bytes  # its first image's hash (its member in the chunk sets)


@dataclass(frozen=True, slots=True)
class Entry:
    """A candidate read in full: its answer and every image's signature."""

    answer_key: str
    answer: CachedAnswer
    signatures: tuple[ImageSignature, ...]


def _chunks(bits: bytes) -> list[int]:
    value = int.from_bytes(bits, "big")
    return [(value >> (CHUNK_BITS * i)) & ((1 << CHUNK_BITS) - 1) for i in range(CHUNKS)]


def encode_signatures(signatures: Sequence[ImageSignature]) -> bytes:
    return b"".join(signature.encode() for signature in signatures)


def decode_signatures(raw: bytes) -> tuple[ImageSignature, ...]:
    if not raw or len(raw) % SIGNATURE_BYTES:
        raise ValueError("not a list of signatures")
    return tuple(
        ImageSignature.decode(raw[i : i + SIGNATURE_BYTES])
        for i in range(0, len(raw), SIGNATURE_BYTES)
    )


class NearIndex:
    """Adds answers to the index and finds candidates; every Redis call goes through the
    answer cache's breaker and fails as CacheUnavailable (a bypass, never a 500)."""

    def __init__(
        self, redis: RedisClient, breaker: CircuitBreaker, namespace: str, ttl_s: int
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        self._namespace = namespace
        self._prefix = f"{namespace}:v1:near"
        self._ttl_s = ttl_s

    def chunk_key(self, group: str, position: int, value: int) -> str:
        return f"{self._prefix}:{{{group}}}:{position}:{value:04x}"

    @staticmethod
    def entry_key(answer_key: str) -> str:
        """Beside the answer: the same hash tag, so the same slot and the same node."""
        return f"{answer_key}:near"

    def probe_keys(self, group: str, bits: bytes) -> list[str]:
        """Every chunk's own set and the 16 sets one bit away from it."""
        keys = []
        for position, value in enumerate(_chunks(bits)):
            keys.append(self.chunk_key(group, position, value))
            keys.extend(
                self.chunk_key(group, position, value ^ (1 << bit)) for bit in range(CHUNK_BITS)
            )
        return keys

    async def add(self, group: str, answer_key: str, signatures: Sequence[ImageSignature]) -> None:
        """Index a stored answer (its first image's hash; every image's signature kept)."""
        member = f"{_digest_of(answer_key)}:{signatures[0].bits.hex()}"
        entry = encode_signatures(signatures)

        async def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(self.entry_key(answer_key), entry, ex=self._ttl_s)
            for position, value in enumerate(_chunks(signatures[0].bits)):
                key = self.chunk_key(group, position, value)
                pipe.sadd(key, member)
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

        await self._call(write)

    async def candidates(
        self, group: str, bits: bytes, max_distance: int, limit: int
    ) -> list[Candidate]:
        """Answers of the group whose first image is within ``max_distance`` (at most 31
        is certain to be found), closest first, at most ``limit``."""
        keys = self.probe_keys(group, bits)
        members = await self._call(lambda: self._redis.sunion(keys))
        found: dict[str, tuple[int, bytes]] = {}
        for raw in members or ():
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            digest, _, hex_bits = text.partition(":")
            if len(digest) != _DIGEST_CHARS or len(hex_bits) != 2 * HASH_BYTES:
                continue
            try:
                theirs = bytes.fromhex(hex_bits)
            except ValueError:
                continue
            distance = hamming(bits, theirs)
            if distance <= max_distance and distance < found.get(digest, (max_distance + 1,))[0]:
                found[digest] = (distance, theirs)
        ranked = sorted(found.items(), key=lambda item: (item[1][0], item[0]))[:limit]
        return [Candidate(self._answer_key(d), dist, theirs) for d, (dist, theirs) in ranked]

    async def read(self, candidates: Sequence[Candidate]) -> list[Entry | Candidate]:
        """Each candidate's answer and signatures; the candidate itself where either has
        expired (or cannot be read), for ``forget``."""
        if not candidates:
            return []

        async def fetch() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for candidate in candidates:
                pipe.get(candidate.answer_key)
                pipe.get(self.entry_key(candidate.answer_key))
            result: list[Any] = await pipe.execute()
            return result

        values = await self._call(fetch)
        out: list[Entry | Candidate] = []
        for i, candidate in enumerate(candidates):
            raw_answer, raw_entry = values[2 * i], values[2 * i + 1]
            answer = CachedAnswer.decode(raw_answer) if raw_answer is not None else None
            try:
                signatures = decode_signatures(raw_entry) if raw_entry is not None else None
            except ValueError:
                signatures = None
            if answer is None or signatures is None:
                out.append(candidate)
            else:
                out.append(Entry(candidate.answer_key, answer, signatures))
        return out

    async def forget(self, group: str, answer_key: str, bits: bytes) -> None:
        """Remove an expired answer's member from its chunk sets."""
        member = f"{_digest_of(answer_key)}:{bits.hex()}"

        async def remove() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for position, value in enumerate(_chunks(bits)):
                pipe.srem(self.chunk_key(group, position, value), member)
            await pipe.execute()

        await self._call(remove)

    def _answer_key(self, digest: str) -> str:
        return f"{self._namespace}:v{CACHE_FORMAT_VERSION}:answer:{{{digest}}}"  # keys.py

    async def _call(self, operation: Any) -> Any:
        return await guarded(self._breaker, operation)


def _digest_of(answer_key: str) -> str:
    """The answer key's digest: its hash tag (keys.py)."""
    return answer_key[answer_key.index("{") + 1 : answer_key.index("}")]
