"""Idempotency-Key: a retry joins the generation still running, or gets its stored answer.

A request that carries ``Idempotency-Key`` is coalesced under a key of its own instead of
the answer cache's: (API key id, idempotency key, body digest). The coalescer then does
what it does for identical requests (gateway/cache/coalesce.py): the first request leads
and its generation outlives its client, a retry that arrives meanwhile waits for that
answer, a later one finds it stored for ``ttl_s``, and a failed generation is never
stored, so a retry after it generates again. Sampled requests (temperature > 0) take part
too: the stored answer is the one sample the first request produced.

The body digest is in the coalescing key, so a different body can never join another
body's generation, with or without Redis. The 409 for a key reused with another body
comes from a second, small record, the key's claim: the first body's digest, set once
for the window (one script, one key). When Redis cannot be asked the claim is skipped:
such a request is answered on its own (no 409), and the coalescer leads for this replica
alone, so a retry that reaches the same replica still joins its generation.

Both keys carry a Redis Cluster hash tag: the answer, its lease and its channel share a
slot (the coalescer's two-key scripts); the claim is a one-key script. See
docs/IDEMPOTENCY.md for the semantics clients see.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.breaker import CircuitBreaker
from gateway.cache.keys import CACHE_FORMAT_VERSION
from gateway.cache.store import guarded
from gateway.errors import ErrorCode, GatewayError
from gateway.redis_link import RedisClient, Script

HEADER: Final = b"idempotency-key"
MAX_KEY_CHARS: Final = 255
# URL-safe and base64 characters: UUIDs, ULIDs, hex and base64 digests all fit; no spaces,
# quotes or control characters, which proxies and logs mangle.
_KEY: Final = rf"[A-Za-z0-9._:~+/=-]{{1,{MAX_KEY_CHARS}}}"
_KEY_CHARS: Final = re.compile(_KEY)
# The header as the OpenAPI document states it: bare, or a structured-field string.
HEADER_PATTERN: Final = f'^(?:{_KEY}|"{_KEY}")$'
# The claim: the first body's digest for the window; the same digest again is allowed.
# KEYS: claim. ARGV: digest, ttl (s). Returns 1 (this body may proceed) or 0 (another body).
_CLAIM_SCRIPT: Final = """
local held = redis.call('get', KEYS[1])
if not held then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0
"""
# The scope of requests sent without an API key (keys off): all of them share one.
ANONYMOUS: Final = "-"


def read_idempotency_key(value: str | None) -> str | None:
    """The header's key; None when absent. Raises GatewayError (400) when malformed.

    The IETF draft (draft-ietf-httpapi-idempotency-key-header) sends it as a structured
    field string, in double quotes; Stripe's SDKs send it bare: both are accepted, and
    name the same key."""
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY_CHARS.fullmatch(key):
        raise GatewayError(
            ErrorCode.INVALID_IDEMPOTENCY_KEY,
            f"The Idempotency-Key header must be 1 to {MAX_KEY_CHARS} characters of "
            "A-Z a-z 0-9 . _ : ~ + / = - (a UUID is a good choice).",
            param="Idempotency-Key",
        )
    return key


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's idempotency key, in the scope of the API key that sent it."""

    scope: str  # the API key's public id; ANONYMOUS without keys
    key: str


def scoped(key: str | None, key_id: str | None) -> IdempotencyKey | None:
    return None if key is None else IdempotencyKey(key_id or ANONYMOUS, key)


@dataclass(frozen=True, slots=True)
class Claim:
    """Where the key's first body digest is kept, and this request's body digest."""

    key: str
    digest: str


def _fields_digest(fields: Sequence[bytes]) -> str:
    """sha256 over length-prefixed fields: no two field lists give the same bytes."""
    digest = hashlib.sha256()
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()


def body_digest(model: str, canonical: bytes, image_digests: Sequence[str]) -> str:
    """What counts as the same body: the answer cache's view of the request (the worker's
    body with images as digests of their decoded bytes, keys sorted, ``stream`` and
    ``stream_options`` left out), and the model it asks."""
    return _fields_digest([model.encode(), canonical, "".join(image_digests).encode()])


def _scope_digest(idempotency: IdempotencyKey) -> str:
    return _fields_digest([idempotency.scope.encode(), idempotency.key.encode()])


def claim_key(namespace: str, idempotency: IdempotencyKey) -> str:
    return f"{namespace}:v{CACHE_FORMAT_VERSION}:idem-claim:{{{_scope_digest(idempotency)}}}"


def answer_key(namespace: str, idempotency: IdempotencyKey, digest: str) -> str:
    """The coalescing key: the answer under "<key>", its lease "<key>:lock", its channel
    "<key>:done" (the coalescer's pattern subscription hears it)."""
    tag = _fields_digest([_scope_digest(idempotency).encode(), digest.encode()])
    return f"{namespace}:v{CACHE_FORMAT_VERSION}:idem:{{{tag}}}"


def key_reused() -> GatewayError:
    return GatewayError(
        ErrorCode.IDEMPOTENCY_KEY_REUSED,
        "This Idempotency-Key was already used with a different request body; "
        "send a new key for a new request.",
        param="Idempotency-Key",
    )


class Claims:
    """Binds each idempotency key to the first body it came with, for the window."""

    def __init__(self, redis: RedisClient, breaker: CircuitBreaker, ttl_s: int) -> None:
        self._claim = Script(redis, _CLAIM_SCRIPT)
        self._breaker = breaker
        self._ttl_s = ttl_s

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    async def claim(self, claim: Claim) -> None:
        """Raises GatewayError (409) when the key holds another body's digest, and
        CacheUnavailable when Redis cannot be asked."""
        allowed = await guarded(
            self._breaker, lambda: self._claim((claim.key,), (claim.digest, self._ttl_s))
        )
        if not allowed:
            raise key_reused()
