"""What a worker gets for one image: upright, in a format it reads, at its detail's size.

Every re-encode of an image happens here, in one decode, before the image's digest (and
with it the cache key, the worker's image uuid, the token estimate and any signature of
its pixels) is taken from the bytes a worker will receive:

- **Orientation.** A phone photo's EXIF orientation tag is applied first, as vLLM applies
  it when it loads an image: an untagged sideways photo and the tagged one are different
  images, a tagged photo and the same pixels stored upright are the same one.
- **Format.** A GIF becomes its first frame, HEIF (libheif decodes it upright) a JPEG.
- **Size.** ``detail`` "low" scales an image down to GATEWAY_IMAGE_LOW_DETAIL_PIXELS,
  "high" and "auto" (or none) to GATEWAY_IMAGE_HIGH_DETAIL_PIXELS (docs/IMAGES.md): the
  checkpoint's image processor would shrink it anyway (smart_resize), so the gateway
  sends no pixel the model will not see, and the client's detail decides the cost.
  The new size is the processor's own: sides on Qwen3-VL's 32-pixel grid, aspect kept.

An image that needs none of this is sent as its caller sent it (no re-encode): the same
input, the same bytes, one key.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Final

from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.heif import heif_image
from gateway.images import (
    PILLOW_FORMAT,
    CheckedImage,
    ImageFormat,
    ImageLimits,
    check_image_bytes,
    image_bytes,
)
from gateway.orientation import UPRIGHT

_GRID: Final = 32  # Qwen3-VL: 16-pixel patches merged 2 x 2 per token
# What ImageOps.exif_transpose (vLLM's loader) applies for each orientation tag.
_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS: Final = frozenset({5, 6, 7, 8})
# Re-encoded photos stay JPEG at a quality whose loss the model does not see; what may be
# a drawing or carry transparency (PNG, WebP, GIF) becomes lossless PNG.
JPEG_QUALITY: Final = 90


@dataclass(frozen=True, slots=True)
class DetailBudgets:
    """The most pixels an image is sent with, by its ``detail``."""

    low: int
    high: int

    def for_detail(self, detail: str | None) -> int:
        return self.low if detail == "low" else self.high


def low_detail_size(width: int, height: int, budget: int) -> tuple[int, int]:
    """The largest size on the token grid within ``budget`` pixels, aspect kept: the
    image processor's own shrink (smart_resize over max_pixels)."""
    scale = math.sqrt(budget / (width * height))
    return (
        max(_GRID, math.floor(width * scale / _GRID) * _GRID),
        max(_GRID, math.floor(height * scale / _GRID) * _GRID),
    )


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) as displayed: a tag of 5 to 8 turns the picture on its side."""
    return (height, width) if orientation in _SIDEWAYS else (width, height)


def sent_size(width: int, height: int, orientation: int, detail: str | None,
              budgets: DetailBudgets) -> tuple[int, int]:  # fmt: skip
    """The size an image of these stored dimensions reaches a worker with."""
    shown = displayed_size(width, height, orientation)
    budget = budgets.for_detail(detail)
    return shown if shown[0] * shown[1] <= budget else low_detail_size(*shown, budget)


def needs_recode(fmt: str, orientation: int, pixels: int, budget: int) -> bool:
    return fmt in ("gif", "heif") or orientation != UPRIGHT or pixels > budget


def apply_detail(
    image: CheckedImage,
    detail: str | None,
    budgets: DetailBudgets,
    limits: ImageLimits,
    param: str,
) -> CheckedImage:
    """The image a worker gets for this ``detail`` (runs in the preparation's thread).

    This is the first decode of the image's pixels (the full decode check comes later): a
    corrupt or truncated image is our 400 here, as it would be there."""
    info = image.info
    if not needs_recode(info.format, info.orientation, info.pixels, budgets.for_detail(detail)):
        return image
    size = sent_size(info.width, info.height, info.orientation, detail, budgets)
    try:
        picture = _decode(image_bytes(image), info.format, (info.width, info.height), size,
                          info.orientation)  # fmt: skip
        if info.orientation in _TRANSPOSE:
            picture = picture.transpose(_TRANSPOSE[info.orientation])
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.BICUBIC)
    except Exception:  # Pillow raises many types for corrupt input; all mean "not decodable"
        raise GatewayError(
            ErrorCode.INVALID_IMAGE, "The image could not be decoded.", param=param
        ) from None
    out = io.BytesIO()
    if info.format in ("jpeg", "heif") and picture.mode == "RGB":
        picture.save(out, "JPEG", quality=JPEG_QUALITY)
    else:
        picture.save(out, "PNG")
    return check_image_bytes(out.getvalue(), limits, param=param)


def _decode(data: bytes, fmt: ImageFormat, stored: tuple[int, int], size: tuple[int, int],
            orientation: int) -> Image.Image:  # fmt: skip
    """The pixels, as stored (first frame), in RGB, or RGBA where transparency is."""
    if fmt == "heif":
        picture = heif_image(data)  # upright already: libheif applies the container's turn
        if picture.size != displayed_size(*stored, orientation):
            raise ValueError("header and decoder disagree")
        return picture.convert("RGBA" if "A" in picture.mode else "RGB")
    with Image.open(io.BytesIO(data), formats=[PILLOW_FORMAT[fmt]]) as source:
        if source.size != stored:
            raise ValueError("header and decoder disagree")
        if fmt == "jpeg":
            # libjpeg's DCT scaling: decode at the smallest 1/2, 1/4 or 1/8 scale still at
            # least the size sent, a fraction of a full decode's work for a phone photo.
            source.draft("RGB", displayed_size(*size, orientation))
        alpha = "A" in source.mode or "transparency" in source.info
        return source.convert("RGBA" if alpha else "RGB")
