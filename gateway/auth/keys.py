"""API keys: their format, how they are made, and the one form in which they are stored.

A key reads ``vlm-<key_id>-<secret>``: ``key_id`` (16 hex characters) is public, shown in
listings and written to the interaction log; ``secret`` is 32 random bytes, url-safe
base64. Only SHA-256 of the whole key is stored: a 256-bit random secret needs no slow
hash, and a database leak does not leak keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "vlm"
_KEY: Final = re.compile(r"vlm-([0-9a-f]{16})-([A-Za-z0-9_-]{32,128})")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored
    key_hash: bytes


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
    return NewKey(key_id, key, hash_key(key))


def parse_key_id(key: str) -> str | None:
    """The public id of a well-formed key; None for anything else."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def matches(key: str, key_hash: bytes) -> bool:
    """Constant-time: the time taken says nothing about how much of the key was right."""
    return hmac.compare_digest(hash_key(key), key_hash)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when absent."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
