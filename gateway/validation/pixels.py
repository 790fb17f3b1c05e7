"""The full decode of a request's images, only where it matters: before a worker sees them.

Everything else about an image (base64, real format, header dimensions, the pixel and
aspect limits, the digest) is checked while the request is prepared. Decoding every pixel
(GATEWAY_VERIFY_IMAGE_DECODE) is what keeps a corrupt image from ever reaching a worker,
so it runs on the paths that send images to one: forwarding after the cache lookup, and
moderation's image check. A cache hit never pays for it: its answer was generated for the
same bytes (the key holds their digest), which were decoded then. A coalescing waiter
gets its leader's answer; if the leader fails, the waiter forwards and decodes itself.

An image this process has already decoded is not decoded again: the same digest is the
same bytes, whose decode can only end the same way. Shoppers ask several questions about
one photo (different answers, so cache misses); only the first pays for its pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from gateway.images import CheckedImage, verify_decode
from gateway.validation.bounds import THREAD_DECODE_NS, decode_ns, off_loop_if

# Digests are 64 characters: a few hundred kilobytes at most.
DECODED_DIGESTS: Final = 4096


class DecodedImages:
    """The digests of the images this process decoded without error, the most recent
    ``capacity``. Used on the event loop only (never from the decoding thread)."""

    def __init__(self, capacity: int = DECODED_DIGESTS) -> None:
        self._capacity = capacity
        self._digests: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, digest: object) -> bool:
        if digest not in self._digests:
            return False
        self._digests.move_to_end(str(digest))
        return True

    def add(self, digest: str) -> None:
        self._digests[digest] = None
        self._digests.move_to_end(digest)
        if len(self._digests) > self._capacity:
            self._digests.popitem(last=False)


@dataclass(slots=True)
class PixelCheck:
    """The images of one request still to be decoded (with their bytes, which it lets go
    of once decoded), with their params for the 400."""

    images: tuple[tuple[CheckedImage, str], ...] = ()
    done: bool = False

    async def verify(self, decoded: DecodedImages | None = None) -> None:
        """Decode every image once (a thread for large ones), but those in ``decoded``;
        raises our 400 for the first that does not decode. Later calls return at once."""
        if self.done or not self.images:
            return
        pending = [
            (i, p) for i, p in self.images if decoded is None or i.info.sha256 not in decoded
        ]
        cost = sum(decode_ns(i.info.format, i.info.pixels, i.info.size_bytes) for i, _ in pending)
        await off_loop_if(cost > THREAD_DECODE_NS, lambda: _decode_all(pending))
        if decoded is not None:
            for image, _ in pending:
                decoded.add(image.info.sha256)
        # Done: let go of the images' bytes, which the rest of the request does not need.
        self.done, self.images = True, ()


def _decode_all(images: list[tuple[CheckedImage, str]]) -> None:
    for image, param in images:
        verify_decode(image, param)


def pixel_check(images: list[CheckedImage], params: list[str], enabled: bool) -> PixelCheck:
    if not enabled:
        return PixelCheck()
    return PixelCheck(tuple(zip(images, params, strict=True)))
