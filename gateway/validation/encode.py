"""Encode: what a prepared request becomes in bytes. The JSON body a worker receives
(encoded on first use: a cache hit never sends it) and the canonical request the cache
keys on (images as digests, shape-only fields dropped). Both refuse a lone surrogate
with the same 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic_core import PydanticSerializationError, to_json

from gateway.errors import ErrorCode, GatewayError
from gateway.validation.features import key_view

# Fields that shape the response (JSON or SSE) but not the answer itself.
_SHAPE_ONLY_FIELDS: Final = frozenset({"stream", "stream_options"})

# A worker body estimated above this many bytes is encoded while the request is prepared
# (in a thread: such a body's images or text make the preparation heavy, bounds.py);
# smaller ones on first use, on the loop, where 256 KiB of data URI take about 0.07 ms.
LAZY_BODY_MAX_BYTES: Final = 256 * 1024


class WorkerJSON:
    """The JSON body a worker receives, encoded on first use: a cache hit never forwards
    it (encoding the 71 KB benchmark request took 21 µs of every hit). The payload is not
    changed after preparing, and the canonical key has already refused what the encoder
    refuses (lone surrogates: canonical_request), so encoding later gives the same bytes
    and cannot fail."""

    __slots__ = ("_encoded", "_image_uuids", "_payload")

    def __init__(self, payload: dict[str, Any], image_uuids: list[str] | None) -> None:
        self._payload = payload
        self._image_uuids = image_uuids
        self._encoded: bytes | None = None

    @property
    def is_encoded(self) -> bool:
        return self._encoded is not None

    def encoded(self) -> bytes:
        if self._encoded is None:  # two racing threads would both get the same bytes
            self._encoded = worker_body(self._payload, self._image_uuids)
        return self._encoded


def _not_unicode() -> GatewayError:
    # JSON's \ud800-style escapes can spell lone surrogates, which are not text.
    return GatewayError(ErrorCode.INVALID_REQUEST, "The request contains invalid Unicode text.")


def worker_body(payload: dict[str, Any], image_uuids: list[str] | None) -> bytes:
    """The JSON the worker gets. With ``image_uuids``, each image part carries its digest as
    vLLM's multimodal ``uuid``: the worker then keys its processor cache by our digest
    instead of hashing the decoded pixels again. Only the gateway sets it (the request
    schema refuses a client's ``uuid``), so no caller can alias another caller's image."""
    if image_uuids:
        uuids = iter(image_uuids)
        messages = []
        for message in payload.get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                content = [
                    {**part, "uuid": next(uuids)} if part.get("type") == "image_url" else part
                    for part in content
                ]
                message = {**message, "content": content}
            messages.append(message)
        payload = {**payload, "messages": messages}
    # pydantic-core's encoder: about 6x faster than json.dumps on a 200 kB data URI (0.1
    # against 0.6 ms of gateway CPU per request). The request schema refuses NaN and
    # Infinity in every float field (protocol.py), so only finite numbers reach here.
    try:
        return to_json(payload)
    except PydanticSerializationError:
        raise _not_unicode() from None  # a lone surrogate, which UTF-8 cannot carry


def canonical_request(payload: Mapping[str, Any], image_digests: Sequence[str]) -> bytes:
    """The request as the key sees it: images as digests, shape-only fields dropped."""
    digests = iter(image_digests)
    view = {k: v for k, v in key_view(dict(payload)).items() if k not in _SHAPE_ONLY_FIELDS}
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
    text = json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate, which UTF-8 cannot carry. Every string of the worker's body is
        # in this view too (images aside, which are our own ASCII data URIs), so this is
        # the 400 every such request gets, whether its answer is cached or not.
        raise _not_unicode() from None
