"""Settings of content moderation, read from the environment (``GATEWAY_MODERATION_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.moderation.policy import load_policy

DEFAULT_IMAGE_QUESTION = (
    "Does this image show nudity or sexual content, graphic violence, weapons or drugs, "
    "or is it an advertisement or spam (QR codes, contact details, promotional text)? "
    "Answer with one word: yes or no."
)


class ModerationSettings(BaseSettings):
    """Everything moderation can be told (env: GATEWAY_MODERATION_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_MODERATION_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Off: nothing is checked and the log's moderation column stays empty.
    enabled: bool = True
    check_prompts: bool = True
    check_answers: bool = True
    # A JSON policy replacing the one shipped in gateway/moderation/default_policy.json.
    policy_file: Path | None = None

    # Ask the model itself whether each new image breaks the policy. Off by default: it
    # costs a worker call per image the gateway has not seen (verdicts are cached by
    # image digest in Redis for image_verdict_ttl_s).
    image_check: bool = False
    image_question: str = Field(default=DEFAULT_IMAGE_QUESTION, min_length=1, max_length=2000)
    image_check_max_tokens: int = Field(default=3, ge=1, le=32)
    image_verdict_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # A check that takes longer counts as failed (the request goes on: see images.py).
    image_check_timeout_s: float = Field(default=30.0, gt=0)
    # True: a request whose image could not be checked is refused with 503
    # moderation_unavailable instead of going on. For deployments where an unchecked
    # image must never reach the model's answer; it turns a worker hiccup into refusals.
    image_check_fail_closed: bool = False

    # Streamed answers are checked as they arrive: each check covers the new text plus
    # this many characters before it, so a term split across chunks is still seen; it
    # must exceed the longest match a term, pattern or near rule can make (the shipped
    # policy's near rules span at most 60 characters; a few of its patterns can span
    # more). A longer match is caught when the stream ends, where the whole answer is
    # checked once more: the client has seen it then, but it is neither cached nor
    # logged as passed. A larger overlap costs CPU on every streamed chunk (128 costs
    # 1.5 times 64: loadtest/bench/moderation.py).
    stream_overlap_chars: int = Field(default=64, ge=16, le=65536)

    @field_validator("policy_file")
    @classmethod
    def _loads(cls, value: Path | None) -> Path | None:
        # Compiled here once to find a broken file at start-up, not on the first request.
        if value is not None:
            load_policy(value)
        return value
