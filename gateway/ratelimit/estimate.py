"""The token cost of a request, estimated before it runs (for tokens-per-minute limits).

cost = text tokens + image tokens + the completion budget (max_tokens).

Text: ceil(UTF-8 bytes / 3). English runs about 4 characters a token, so this counts it
a third high; a CJK character is 3 bytes and about one Qwen token, so it counts Chinese
about right, where characters / 4 would count it three or four times too low.

Images: the checkpoint's own image processor (transformers' Qwen2VLImageProcessor, which
Qwen3-VL uses), counted as the worker counts them. The vision encoder cuts 16-pixel
patches and merges 2 x 2 of them into one token, so smart_resize rounds each side to a
multiple of 32 and then scales the image, aspect kept, into [min_pixels, max_pixels]
(the preprocessor_config.json's size.shortest_edge and size.longest_edge: GATEWAY_IMAGE_
PROCESSOR_MIN_PIXELS and _MAX_PIXELS); an image costs (H / 32) * (W / 32) tokens of the
result: 640 x 480 -> 300, 1920 x 1080 -> 2040, a 100 x 100 icon -> 64 (scaled up to
min_pixels). The sizes counted are those the gateway sends (validation/detail.py).

The completion budget is counted in full, up front, as OpenAI counts max_tokens: the
limit must hold before the generation runs, and an answer is never longer than it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

IMAGE_TOKEN_SIDE = 32  # patch 16 x spatial merge 2
# Qwen's chat template wraps each message as "<|im_start|>{role}\n...<|im_end|>\n": five
# tokens even around an empty text, so 300,000 empty messages are not free.
MESSAGE_OVERHEAD_TOKENS = 5
TEXT_BYTES_PER_TOKEN = 3


@dataclass(frozen=True, slots=True)
class PixelBounds:
    """The image processor's pixel range (Qwen3-VL-8B-Instruct's preprocessor_config)."""

    min_pixels: int = 64 * 32 * 32  # 65,536
    max_pixels: int = 16_384 * 32 * 32  # 16,777,216


QWEN3_VL: PixelBounds = PixelBounds()


def smart_resize(width: int, height: int, bounds: PixelBounds = QWEN3_VL) -> tuple[int, int]:
    """(width, height) as the image processor resizes them: transformers'
    ``qwen2_vl.image_processing_qwen2_vl.smart_resize`` with factor 32, line for line
    (Python's round() rounds halves to even, as it does there)."""
    factor = IMAGE_TOKEN_SIDE
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > bounds.max_pixels:
        beta = math.sqrt((height * width) / bounds.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < bounds.min_pixels:
        beta = math.sqrt(bounds.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def image_tokens(width: int, height: int, bounds: PixelBounds = QWEN3_VL) -> int:
    """Tokens the checkpoint spends on one image of width x height pixels."""
    w_bar, h_bar = smart_resize(width, height, bounds)
    return (w_bar // IMAGE_TOKEN_SIDE) * (h_bar // IMAGE_TOKEN_SIDE)


def text_tokens(text: str) -> int:
    size = len(text.encode("utf-8", "surrogatepass"))
    return -(-size // TEXT_BYTES_PER_TOKEN)


def estimate_tokens(
    text: str,
    image_sizes: Iterable[tuple[int, int]],
    max_tokens: int,
    messages: int = 1,
    bounds: PixelBounds = QWEN3_VL,
) -> int:
    """The request's cost: text, images (width, height as sent), each message's template
    tokens and the completion budget."""
    images = sum(image_tokens(width, height, bounds) for width, height in image_sizes)
    return text_tokens(text) + images + MESSAGE_OVERHEAD_TOKENS * messages + max_tokens
