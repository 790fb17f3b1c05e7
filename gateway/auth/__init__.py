"""API keys: format and hashing, the in-memory key store, the ops CLI."""

from gateway.auth.keys import bearer_token, generate_key, hash_key, parse_key_id
from gateway.auth.settings import AuthSettings
from gateway.auth.store import AuthFailure, AuthUnavailable, KeyRecord, KeyStore

__all__ = [
    "AuthFailure",
    "AuthSettings",
    "AuthUnavailable",
    "KeyRecord",
    "KeyStore",
    "bearer_token",
    "generate_key",
    "hash_key",
    "parse_key_id",
]
