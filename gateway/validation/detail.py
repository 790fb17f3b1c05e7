"""Image ``detail``: ``low`` shrinks a photo to a pixel budget the gateway chooses.

The client says how much detail it needs; the gateway, never the client, decides what that
costs: a ``low`` image larger than GATEWAY_IMAGE_LOW_DETAIL_PIXELS is scaled down (sides
multiples of 32, Qwen3-VL's token grid) and re-encoded before it leaves for a worker. Its
new bytes have their own digest, so ``detail`` enters the cache key, the worker's image
uuid and the token estimate (which counts the shrunk size) without a field of its own.
``high`` and ``auto`` keep the photo as sent (up to GATEWAY_MAX_IMAGE_PIXELS). An image
already within the budget is sent as it is: the same input, the same answer, one key.
"""

from __future__ import annotations

import base64
import io
import math

from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.images import CheckedImage, ImageLimits, check_image_bytes

_GRID = 32  # Qwen3-VL: 16-pixel patches merged 2 x 2 per token


def low_detail_size(width: int, height: int, budget: int) -> tuple[int, int]:
    """The largest size on the token grid within ``budget`` pixels, aspect kept."""
    scale = math.sqrt(budget / (width * height))
    return (
        max(_GRID, math.floor(width * scale / _GRID) * _GRID),
        max(_GRID, math.floor(height * scale / _GRID) * _GRID),
    )


def apply_detail(
    image: CheckedImage, detail: str | None, budget: int, limits: ImageLimits, param: str
) -> CheckedImage:
    """The image a worker gets for this ``detail`` (runs in the preparation's thread).

    The shrink is the first decode of the image's pixels (the full decode check comes
    later): a corrupt or truncated image is our 400 here, as it would be there."""
    if detail != "low" or image.info.pixels <= budget:
        return image
    data = image.data
    if data is None:
        data = base64.b64decode(image.data_uri.split(",", 1)[1])
    size = low_detail_size(image.info.width, image.info.height, budget)
    try:
        with Image.open(io.BytesIO(data), formats=[image.info.format.upper()]) as source:
            if source.size != (image.info.width, image.info.height):
                raise ValueError("header and decoder disagree")
            shrunk = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except Exception:  # Pillow raises many types for corrupt input; all mean "not decodable"
        raise GatewayError(
            ErrorCode.INVALID_IMAGE, "The image could not be decoded.", param=param
        ) from None
    out = io.BytesIO()
    if image.info.format == "jpeg":
        shrunk.save(out, "JPEG", quality=90)
    else:
        shrunk.save(out, "PNG")
    return check_image_bytes(out.getvalue(), limits, param=param)
