"""Per-key rate limits in Redis: requests and tokens per minute, concurrent requests."""

from gateway.ratelimit.concurrency import ConcurrencyLimiter
from gateway.ratelimit.estimate import estimate_tokens, image_tokens, text_tokens
from gateway.ratelimit.settings import RateLimitSettings
from gateway.ratelimit.windows import (
    LimiterUnavailable,
    LimitKind,
    Window,
    WindowLimiter,
    retry_after_s,
)

__all__ = [
    "ConcurrencyLimiter",
    "LimitKind",
    "LimiterUnavailable",
    "RateLimitSettings",
    "Window",
    "WindowLimiter",
    "estimate_tokens",
    "image_tokens",
    "retry_after_s",
    "text_tokens",
]
