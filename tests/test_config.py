"""gateway.config: settings from GATEWAY_* variables, validated at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import Settings


def test_worker_urls_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WORKER_URLS", " http://a:8100/, http://b:8100 ,")
    monkeypatch.setenv("GATEWAY_MAX_BODY_BYTES", "1048576")
    monkeypatch.setenv("GATEWAY_WORKER_API_KEY", "s3cret-value")
    settings = Settings()
    assert settings.worker_urls == ("http://a:8100", "http://b:8100")
    assert settings.max_body_bytes == 1_048_576
    assert settings.worker_api_key is not None
    assert "s3cret-value" not in repr(settings)  # secrets stay out of logs


def test_defaults_are_consistent() -> None:
    settings = Settings()
    assert settings.default_max_tokens <= settings.max_tokens_cap
    assert settings.first_byte_timeout_s <= settings.total_timeout_s


@pytest.mark.parametrize(
    "overrides",
    [
        {"worker_urls": "ftp://a"},
        {"worker_urls": "http://"},
        {"worker_urls": ","},
        {"max_tokens_cap": 10, "default_max_tokens": 11},
        {"first_byte_timeout_s": 10, "total_timeout_s": 5},
        {"max_image_pixels": 100_000_000},  # above Pillow's own bomb limit
        {"max_body_bytes": 0},
        {"connect_timeout_s": -1},
    ],
)
def test_bad_settings_stop_the_start(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]
