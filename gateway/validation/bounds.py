"""Bounds on what one request may cost a replica, checked before the work they bound.

A body of 10 MB may hold 300,000 empty messages: counted as zero prompt characters, it
passed every limit and held the event loop for its validation, encoding and cache key.
So: messages per request and content parts per message are counted on the parsed JSON,
before the typed validation; each message counts an overhead in the prompt and token
limits (the chat template's role markers cost tokens even around empty text); and the
work that grows with the body runs in a thread once it is large enough to be felt by
the other requests of the replica (health checks included). Decoding an image is judged
by the pixels its header declares as well as by its size: a 2.8 KB palette PNG of
4096 x 4096 takes a second of decoding. Preparing a request decodes pixels only to
re-encode them (a GIF's first frame, detail "low"); the full decode check runs later, on
a miss (pixels.py, decode_ns).
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypeVar

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.images import (
    ImageFormat,
    is_remote_url,
    read_dimensions,
    sniff_format,
    split_image_reference,
)
from gateway.orientation import UPRIGHT, read_orientation
from gateway.ratelimit.estimate import MESSAGE_OVERHEAD_TOKENS, TEXT_BYTES_PER_TOKEN

_T = TypeVar("_T")

# What one message costs the prompt limit beyond its text: its template tokens
# (ratelimit/estimate.py), at the estimate's bytes per token.
MESSAGE_OVERHEAD_CHARS: Final = TEXT_BYTES_PER_TOKEN * MESSAGE_OVERHEAD_TOKENS

# Work is moved to a thread above these sizes: measured on this project's 2-core machine,
# each keeps the work on the loop under about half a millisecond (a thread hop costs about
# 0.03 ms of CPU and 0.06 ms of latency, so smaller requests stay on the loop and their
# CPU per request does not grow).
# JSON parsing and typed validation cost follows the body's structure more than its size:
# a 70 KB body holding one photo parses in tens of microseconds, 34 KB of 1,000 messages
# take milliseconds. Its objects are counted by their opening braces (C speed; braces in
# strings only over-count, which costs a thread hop, never a stall).
THREAD_BODY_BYTES: Final = 256 * 1024
THREAD_BODY_OBJECTS: Final = 64
# A thread does not help a parse that holds the GIL, and JSON values cost it about 1 us
# each (350,000 empty arrays in 1 MB: 0.6 s): a body of more values than this goes to the
# child process (offload.py), whatever its size. Values are counted by their commas (only
# commas separate array items and object members; those in strings over-count, which
# costs a trip to the child, never a stall). A 2,048-message conversation (the limit) has
# about 6,000; a photo's body a handful.
PROCESS_BODY_VALUES: Final = 4096
THREAD_MESSAGES: Final = 32  # validation, model_dump, encoding, canonical key per message
THREAD_TEXT_CHARS: Final = 64 * 1024
# An image's checks on a cache hit: strict base64 decoding (pybase64: 0.05 us per KB of
# base64), sha256 (0.4 us), the header; preparing a one-photo request costs about 0.7 us
# per KB of base64 over a fixed 0.06 ms (69 KB: 0.09 ms; 260 KB: 0.25 ms), so about
# 0.42 ms at 512 KB. An image of up to 380 KB stays on the loop (640 x 480 JPEG: 53 KB).
THREAD_BASE64_CHARS: Final = 512 * 1024
# Re-encoding while the request is prepared: a GIF's first frame as PNG (about 200 ns a
# pixel) and detail "low"'s shrink (15 ns a pixel, and only of images over the budget).
THREAD_RECODE_PIXELS: Final = 2048
# The full decode check (pixels.py), run on a miss: its cost in ns per compressed byte and
# per pixel, by format, fitted on photos: a draft-mode JPEG's entropy decoding grows with
# its bytes (a 640 x 480 photo of 53 KB: 0.44 ms, on the loop), PNG's inflate too, and
# unfiltering, WebP and GIF decoding with the pixels (a 256 x 256 PNG: 0.73 ms).
THREAD_DECODE_NS: Final = 500_000
_DECODE_NS_PER_BYTE: Final[dict[ImageFormat, float]] = {
    "jpeg": 6.5,
    "png": 7.0,
    "webp": 0.0,
    "gif": 0.0,
    "heif": 0.0,
}
_DECODE_NS_PER_PIXEL: Final[dict[ImageFormat, float]] = {
    "jpeg": 0.45,
    "png": 10.0,
    "webp": 13.0,
    "gif": 5.0,
    # A converted HEIF reaches the decode check as the JPEG it became; its own decode
    # is the conversion's (heavy_work sends every HEIF to a thread).
    "heif": 10.0,
}
# An image's header is looked for in its first 2 KB of base64, where it almost always is,
# then in this much of it (a JPEG's size marker may follow its EXIF block and ICC profile);
# an image whose header is further in is large anyway.
_HEADER_BASE64_CHARS: Final = (2 * 1024, 64 * 1024)


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
    return len(raw) > THREAD_BODY_BYTES or _holds_more_than(raw, b"{", THREAD_BODY_OBJECTS)


BodyPlace = Literal["loop", "thread", "process"]


def body_place(raw: bytes) -> BodyPlace:
    """Where parsing and validating ``raw`` runs: by its values first, then its size."""
    if len(raw) > PROCESS_BODY_VALUES and _holds_more_than(raw, b",", PROCESS_BODY_VALUES):
        return "process"
    return "thread" if heavy_body(raw) else "loop"


def _holds_more_than(raw: bytes, char: bytes, limit: int) -> bool:
    """``raw.count(char) > limit``, stopping at ``limit + 1``: each find is a memchr, so a
    photo's body (a handful of braces in 70 KB) is scanned in 1 µs instead of count's 17."""
    position = -1
    for _ in range(limit + 1):
        position = raw.find(char, position + 1)
        if position < 0:
            return False
    return True


async def off_loop_if(heavy: bool, work: Callable[[], _T]) -> _T:
    """Run ``work`` in a thread when it is heavy enough to hold the event loop."""
    if heavy:
        return await asyncio.to_thread(work)
    return work()


def _image_head(reference: str | None, chars: int) -> bytes | None:
    """The first ``chars`` of an inline image's base64, decoded (None: not inline, or not
    base64, which its checks refuse)."""
    if reference is None or is_remote_url(reference):
        return None
    try:
        # Only the start of the reference is split: the rest is neither copied nor matched.
        # A data URI's prefix ends at its first comma, however many parameters it holds
        # (a head read from a fixed offset missed a GIF behind 300 characters of them).
        start = reference.find(",") + 1 if reference[:5].lower() == "data:" else 0
        _, payload = split_image_reference(reference[: start + chars], allow_bare_base64=True)
        head = payload[:chars]
        return binascii.a2b_base64(head[: len(head) - len(head) % 4])
    except (GatewayError, binascii.Error, ValueError):
        return None


def image_format(reference: str | None, data: bytes | None = None) -> ImageFormat | None:
    """An image's real format from its first bytes (None when unknown)."""
    head = data if data is not None else _image_head(reference, 16)
    return sniff_format(head) if head is not None else None


def image_pixels(reference: str | None, data: bytes | None = None) -> int:
    """The pixels an image's header declares (0 when it cannot be read: such an image is
    refused by its checks before any decoding). Decodes as little base64 as it can."""
    for chars in (0,) if data is not None else _HEADER_BASE64_CHARS:
        head = data if data is not None else _image_head(reference, chars)
        if head is None:
            return 0
        fmt = sniff_format(head)
        size = read_dimensions(head, fmt) if fmt is not None else None
        if size is not None:
            return size[0] * size[1]
    return 0


def heavy_work(
    *,
    messages: int = 0,
    text_chars: int = 0,
    references: Iterable[str] = (),
    fetched: Iterable[bytes | None] = (),
    low_detail: Iterable[bool] = (),
    low_detail_pixels: int = 0,
    high_detail_pixels: int | None = None,
) -> bool:
    """Whether preparing a request of this shape belongs in a thread. Its images' base64
    is decoded and hashed; GIFs, HEIFs, images tagged with an EXIF orientation, and those
    over their detail's pixels (``low_detail_pixels`` for those that ask for "low",
    ``low_detail`` in the order of ``references``; ``high_detail_pixels`` for the others,
    None: not counted) are decoded and re-encoded too (detail.py). The full decode check
    is not part of it (decode_ns)."""
    if messages > THREAD_MESSAGES or text_chars > THREAD_TEXT_CHARS:
        return True
    references, fetched, low = list(references), list(fetched), list(low_detail)
    encoded = sum(len(ref) for ref in references) + sum(len(d or b"") for d in fetched)
    if encoded > THREAD_BASE64_CHARS:
        return True
    recoded = 0
    for index, reference in enumerate(references):
        data = fetched[index] if index < len(fetched) else None
        fmt = image_format(reference, data)
        if fmt == "heif":
            return True  # a phone photo's HEVC decode; its size is not in a short head
        budget = low_detail_pixels if index < len(low) and low[index] else high_detail_pixels
        if fmt != "gif" and budget is None and not _oriented(reference, data, fmt):
            continue  # no pixel work: its header need not be read
        pixels = image_pixels(reference, data)
        over = budget is not None and pixels > budget
        if fmt == "gif" or over or _oriented(reference, data, fmt):
            recoded += pixels  # else sent as it is (detail.py)
            if recoded > THREAD_RECODE_PIXELS:
                return True
    return False


def _oriented(reference: str | None, data: bytes | None, fmt: ImageFormat | None) -> bool:
    """Whether an image's EXIF orientation tag turns it (read from its first 2 KB of
    base64, where a camera writes the tag; one written further in is missed here, which
    costs a re-encode on the loop, never a wrong image)."""
    if fmt is None:
        return False
    head = data if data is not None else _image_head(reference, _HEADER_BASE64_CHARS[0])
    return head is not None and read_orientation(head, fmt) != UPRIGHT


def decode_ns(fmt: ImageFormat, pixels: int, size_bytes: int) -> float:
    """The full decode check's cost for one image, in nanoseconds (see THREAD_DECODE_NS)."""
    return _DECODE_NS_PER_BYTE[fmt] * size_bytes + _DECODE_NS_PER_PIXEL[fmt] * pixels
