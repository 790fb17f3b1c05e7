"""The token cost of a request, estimated before it runs (for tokens-per-minute limits).

cost = text tokens + image tokens + the completion budget (max_tokens).

Text: ceil(UTF-8 bytes / 3). English runs about 4 characters a token, so this counts it
a third high; a CJK character is 3 bytes and about one Qwen token, so it counts Chinese
about right, where characters / 4 would count it three or four times too low.

Images: Qwen3-VL's own arithmetic. The vision encoder cuts 16-pixel patches and merges
2 x 2 of them into one token, so each side is rounded to a multiple of 32 (at least 32)
and an image costs (H / 32) * (W / 32) tokens: 640 x 480 -> 300, 1920 x 1080 -> 2040.

The completion budget is counted in full, up front, as OpenAI counts max_tokens: the
limit must hold before the generation runs, and an answer is never longer than it.
"""

from __future__ import annotations

from collections.abc import Iterable

IMAGE_TOKEN_SIDE = 32  # patch 16 x spatial merge 2
# Qwen's chat template wraps each message as "<|im_start|>{role}\n...<|im_end|>\n": five
# tokens even around an empty text, so 300,000 empty messages are not free.
MESSAGE_OVERHEAD_TOKENS = 5
TEXT_BYTES_PER_TOKEN = 3


def image_tokens(width: int, height: int) -> int:
    """Tokens Qwen3-VL spends on one image of width x height pixels."""
    return _rounded_units(width) * _rounded_units(height)


def _rounded_units(side: int) -> int:
    # Python's round() rounds halves to even, as Qwen's smart_resize does.
    return max(1, round(side / IMAGE_TOKEN_SIDE))


def text_tokens(text: str) -> int:
    size = len(text.encode("utf-8", "surrogatepass"))
    return -(-size // TEXT_BYTES_PER_TOKEN)


def estimate_tokens(
    text: str, image_sizes: Iterable[tuple[int, int]], max_tokens: int, messages: int = 1
) -> int:
    """The request's cost: text, images (width, height), each message's template tokens
    and the completion budget."""
    images = sum(image_tokens(width, height) for width, height in image_sizes)
    return text_tokens(text) + images + MESSAGE_OVERHEAD_TOKENS * messages + max_tokens
