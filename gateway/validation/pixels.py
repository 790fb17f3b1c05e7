"""The full decode of a request's images, only where it matters: before a worker sees them.

Everything else about an image (base64, real format, header dimensions, the pixel and
aspect limits, the digest) is checked while the request is prepared. Decoding every pixel
(GATEWAY_VERIFY_IMAGE_DECODE) is what keeps a corrupt image from ever reaching a worker,
so it runs on the paths that send images to one: forwarding after the cache lookup, and
moderation's image check. A cache hit never pays for it: its answer was generated for the
same bytes (the key holds their digest), which were decoded then. A coalescing waiter
gets its leader's answer; if the leader fails, the waiter forwards and decodes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.images import CheckedImage, verify_decode
from gateway.validation.bounds import THREAD_DECODE_NS, decode_ns, off_loop_if


@dataclass(slots=True)
class PixelCheck:
    """The images of one request still to be decoded (with their bytes, which it lets go
    of once decoded), with their params for the 400."""

    images: tuple[tuple[CheckedImage, str], ...] = ()
    done: bool = False

    async def verify(self) -> None:
        """Decode every image once (a thread for large ones); raises our 400 for the first
        that does not decode. Later calls return at once."""
        if self.done or not self.images:
            return
        cost = sum(
            decode_ns(i.info.format, i.info.pixels, i.info.size_bytes) for i, _ in self.images
        )
        await off_loop_if(cost > THREAD_DECODE_NS, self._decode_all)
        # Done: let go of the images' bytes, which the rest of the request does not need.
        self.done, self.images = True, ()

    def _decode_all(self) -> None:
        for image, param in self.images:
            verify_decode(image, param)


def pixel_check(images: list[CheckedImage], params: list[str], enabled: bool) -> PixelCheck:
    if not enabled:
        return PixelCheck()
    return PixelCheck(tuple(zip(images, params, strict=True)))
