"""Cache keys: the pure part of the answer cache (see gateway/cache.py for the policy).

Kept apart from Redis so validation can compute a request's canonical form while
it still holds the parsed payload, without the hot path parsing the body again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

CACHE_FORMAT_VERSION: Final = 1
# Fields that shape the response (JSON or SSE) but not the answer itself.
_SHAPE_ONLY_FIELDS: Final = frozenset({"stream", "stream_options"})


def is_deterministic(payload: Mapping[str, Any], allow_seeded: bool) -> bool:
    """Whether the request asks for an answer that can be replayed (see Policy)."""
    if payload.get("temperature") == 0:
        return True
    return allow_seeded and payload.get("seed") is not None


def canonical_request(payload: Mapping[str, Any], image_digests: Sequence[str]) -> bytes:
    """The request as the key sees it: images as digests, shape-only fields dropped."""
    digests = iter(image_digests)
    view = {k: v for k, v in payload.items() if k not in _SHAPE_ONLY_FIELDS}
    messages = []
    for message in view.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    part = {**part, "image_url": {"url": f"sha256:{next(digests)}"}}
                parts.append(part)
            message = {**message, "content": parts}
        messages.append(message)
    view["messages"] = messages
    return json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


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
    return f"{namespace}:v{CACHE_FORMAT_VERSION}:answer:{digest.hexdigest()}"
