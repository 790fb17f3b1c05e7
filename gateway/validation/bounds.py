"""Bounds on what one request may cost a replica, checked before the work they bound.

A body of 10 MB may hold 300,000 empty messages: counted as zero prompt characters, it
passed every limit and held the event loop for its validation, encoding and cache key.
So: messages per request and content parts per message are counted on the parsed JSON,
before the typed validation; each message counts an overhead in the prompt and token
limits (the chat template's role markers cost tokens even around empty text); and the
work that grows with the body runs in a thread once it is large enough to be felt by
the other requests of the replica (health checks included). Image work is judged by
the pixels the image header declares, not by its base64 length: a 2.8 KB palette PNG of
4096 x 4096 takes a second of decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.images import is_remote_url, read_dimensions, sniff_format, split_image_reference
from gateway.ratelimit.estimate import MESSAGE_OVERHEAD_TOKENS, TEXT_BYTES_PER_TOKEN

_T = TypeVar("_T")

# What one message costs the prompt limit beyond its text: its template tokens
# (ratelimit/estimate.py), at the estimate's bytes per token.
MESSAGE_OVERHEAD_CHARS: Final = TEXT_BYTES_PER_TOKEN * MESSAGE_OVERHEAD_TOKENS

# Work is moved to a thread above these sizes: measured on this project's 2-core machine,
# each keeps the work on the loop under about half a millisecond (a thread hop costs about
# 0.05 ms, so smaller requests stay on the loop and their CPU per request does not grow).
# JSON parsing and typed validation cost follows the body's structure more than its size:
# a 70 KB body holding one photo parses in tens of microseconds, 34 KB of 1,000 messages
# take milliseconds. Its objects are counted by their opening braces (C speed; braces in
# strings only over-count, which costs a thread hop, never a stall).
THREAD_BODY_BYTES: Final = 256 * 1024
THREAD_BODY_OBJECTS: Final = 64
THREAD_MESSAGES: Final = 32  # validation, model_dump, encoding, canonical key per message
THREAD_TEXT_CHARS: Final = 64 * 1024
THREAD_BASE64_CHARS: Final = 32 * 1024  # base64 decoding and hashing
THREAD_PIXELS: Final = 1024 * 1024  # decoding (verify_image_decode) and re-encoding
# The header of an image is looked for in this much of its base64 (a JPEG's size marker
# may follow its EXIF block); an image whose header is further in is large anyway.
_HEADER_BASE64_CHARS: Final = 64 * 1024


def check_counts(data: dict[str, Any], settings: Settings) -> None:
    """Messages per request and content parts per message, on the parsed JSON: before
    the typed validation, whose cost grows with both."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        return  # the typed validation says what is wrong
    if len(messages) > settings.max_messages:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            f"The request has {len(messages)} messages; the limit is {settings.max_messages}.",
            param="messages",
        )
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and len(content) > settings.max_content_parts:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"A message has {len(content)} content parts; the limit is "
                f"{settings.max_content_parts}.",
                param=f"messages[{i}].content",
            )


def heavy_body(raw: bytes) -> bool:
    """Whether parsing and validating ``raw`` belongs in a thread."""
    return len(raw) > THREAD_BODY_BYTES or raw.count(b"{") > THREAD_BODY_OBJECTS


async def off_loop_if(heavy: bool, work: Callable[[], _T]) -> _T:
    """Run ``work`` in a thread when it is heavy enough to hold the event loop."""
    if heavy:
        return await asyncio.to_thread(work)
    return work()


def image_pixels(reference: str | None, data: bytes | None = None) -> int:
    """The pixels an image's header declares (0 when it cannot be read: such an image is
    refused by its checks before any decoding)."""
    if data is None:
        if reference is None or is_remote_url(reference):
            return 0
        try:
            _, payload = split_image_reference(reference, allow_bare_base64=True)
            head = payload[:_HEADER_BASE64_CHARS]
            data = base64.b64decode(head[: len(head) - len(head) % 4])
        except (GatewayError, binascii.Error, ValueError):
            return 0
    fmt = sniff_format(data)
    size = read_dimensions(data, fmt) if fmt is not None else None
    return size[0] * size[1] if size is not None else 0


def heavy_work(
    *,
    messages: int = 0,
    text_chars: int = 0,
    references: Iterable[str] = (),
    fetched: Iterable[bytes | None] = (),
) -> bool:
    """Whether preparing a request of this shape belongs in a thread."""
    if messages > THREAD_MESSAGES or text_chars > THREAD_TEXT_CHARS:
        return True
    references, fetched = list(references), list(fetched)
    encoded = sum(len(ref) for ref in references) + sum(len(d or b"") for d in fetched)
    if encoded > THREAD_BASE64_CHARS:
        return True
    pixels = 0
    for index, reference in enumerate(references):
        pixels += image_pixels(reference, fetched[index] if index < len(fetched) else None)
        if pixels > THREAD_PIXELS:
            return True
    return False
