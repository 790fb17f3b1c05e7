"""Settings of image-text matching (env: GATEWAY_MATCH_<NAME>)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_MATCH_", frozen=True, extra="ignore")

    # Candidate texts per request: each is one worker request (they share the image's
    # prefix in the worker's cache, but each is a prefill of its own).
    max_texts: int = Field(default=10, gt=0, le=64)
    max_text_chars: int = Field(default=1000, gt=0)
