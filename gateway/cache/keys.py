"""Cache keys: the pure part of the answer cache (see store.py for the policy).

The request's canonical form is computed by validation (validation/prepare.py) while it
still holds the parsed payload, so the hot path never parses the body again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

CACHE_FORMAT_VERSION: Final = 1


def is_deterministic(payload: Mapping[str, Any], allow_seeded: bool) -> bool:
    """Whether the request asks for an answer that can be replayed (see Policy)."""
    if payload.get("temperature") == 0:
        return True
    return allow_seeded and payload.get("seed") is not None


def derive_key(
    namespace: str,
    model: str,
    revision: str,
    request: bytes,
    image_digests: Sequence[str],
) -> str:
    digest = hashlib.sha256()
    fields = [
        f"v{CACHE_FORMAT_VERSION}".encode(),
        namespace.encode(),
        model.encode(),
        revision.encode(),
        request,
        len(image_digests).to_bytes(8, "big") + "".join(image_digests).encode(),
    ]
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    # The digest is a Redis Cluster hash tag: the answer and its coalescing lease
    # ("<key>:lock") share a slot, so the two-key scripts run on a cluster too.
    return f"{namespace}:v{CACHE_FORMAT_VERSION}:answer:{{{digest.hexdigest()}}}"
