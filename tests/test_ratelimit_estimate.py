"""The token estimate behind tokens-per-minute limits, the API-key format, the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.auth.keys import bearer_token, generate_key, hash_key, matches, parse_key_id
from gateway.config import Settings
from gateway.ratelimit.estimate import (
    PixelBounds,
    estimate_tokens,
    image_tokens,
    smart_resize,
    text_tokens,
)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (640, 480, 300),  # the same figure as the worker's own test
        (1920, 1080, 2040),  # 1080 rounds to 1088: 60 x 34
        (1000, 1000, 961),
        # Below the processor's min_pixels (65,536) an image is scaled up to it: a
        # 32 x 32 icon costs 64 tokens, not 1, and a side never rounds to zero.
        (32, 32, 64),
        (1, 1, 64),
        (48, 48, 64),
        (80, 32, 78),  # 13 x 6: each side rounded up after the scale
        # Phone photos within Qwen3-VL-8B's max_pixels (16,777,216): sides rounded to 32,
        # 3024 / 32 = 94.5 rounds half to even, as smart_resize does.
        (4032, 3024, 126 * 94),
        (3024, 4032, 94 * 126),
        (4096, 4096, 128 * 128),
        (4284, 5712, 110 * 147),  # an iPhone's 24 MP: over max_pixels, scaled to 3520 x 4704
    ],
)
def test_image_tokens_follow_qwen3_vl(width: int, height: int, tokens: int) -> None:
    assert image_tokens(width, height) == tokens


def test_image_tokens_follow_the_processors_max_pixels() -> None:
    """The tiny CPU model's processor allows 2,097,152 pixels: a 4032 x 3024 photo is
    scaled to 1664 x 1248 there, 2,028 tokens (the worker's count), where the estimate
    counted 11,844 and charged 11,861 for the request."""
    tiny = PixelBounds(min_pixels=65_536, max_pixels=2_097_152)
    assert smart_resize(4032, 3024, tiny) == (1664, 1248)
    assert image_tokens(4032, 3024, tiny) == 2028
    assert image_tokens(1920, 1080, tiny) == 2040  # within: as it is
    assert image_tokens(1280, 960, tiny) == 1200


def test_text_tokens_are_utf8_bytes_over_three_rounded_up() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abc") == 1
    assert text_tokens("abcd") == 2
    assert text_tokens("真皮吗") == 3  # 9 bytes: one token per CJK character


def test_estimate_adds_text_images_and_the_completion_budget() -> None:
    cost = estimate_tokens("is this leather?", [(640, 480), (1920, 1080)], max_tokens=64)
    assert cost == 6 + 300 + 2040 + 5 + 64  # 5: the one message's template tokens
    # Each message's template costs its tokens, even around no text at all.
    assert estimate_tokens("", [], max_tokens=16, messages=3) == 3 * 5 + 16


def test_keys_parse_hash_and_compare() -> None:
    new = generate_key()
    assert new.key.startswith(f"vlm-{new.key_id}-")
    assert parse_key_id(new.key) == new.key_id
    assert new.key_hash == hash_key(new.key)
    assert matches(new.key, new.key_hash)
    assert not matches(new.key + "x", new.key_hash)
    for garbage in (
        "",
        "vlm-",
        "sk-abc",
        f"vlm-{new.key_id}-short",
        new.key + " ",
        "vlm-XYZ-" + "a" * 40,
    ):
        assert parse_key_id(garbage) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.auth.enabled  # keys are required unless switched off explicitly
    assert defaults.ratelimit.fail_open
    monkeypatch.setenv("GATEWAY_AUTH_ENABLED", "false")
    monkeypatch.setenv("GATEWAY_AUTH_REFRESH_S", "0.5")
    monkeypatch.setenv("GATEWAY_RATELIMIT_REQUESTS_PER_MINUTE", "7")
    monkeypatch.setenv("GATEWAY_RATELIMIT_FAIL_OPEN", "false")
    settings = Settings()
    assert not settings.auth.enabled
    assert settings.auth.refresh_s == 0.5
    assert settings.ratelimit.requests_per_minute == 7
    assert not settings.ratelimit.fail_open
    monkeypatch.setenv("GATEWAY_AUTH_DATABASE_URL", "postgresql://u:secret@h/db")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "secret" not in str(refused.value)
    monkeypatch.setenv("GATEWAY_RATELIMIT_MAX_CONCURRENT", "0")
    monkeypatch.delenv("GATEWAY_AUTH_DATABASE_URL")
    with pytest.raises(ValidationError):
        Settings()
