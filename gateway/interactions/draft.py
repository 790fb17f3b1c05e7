"""What the stages learn about one request, filled in as it goes (the interaction's draft).

The interaction-log middleware (middleware.py) puts a draft in the request's state;
admission, the pipeline and moderation fill it in; the middleware turns it into an
InteractionRecord when the response ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gateway.images import ImageInfo
from gateway.interactions.records import CacheOutcome, Shape

STATE_KEY: Final = "interaction"
CLIENT_GONE: Final = "client_disconnected"


@dataclass(slots=True)
class InteractionDraft:
    """What the stages learn about a request, filled in as it goes."""

    shape: Shape = "chat"
    stream: bool = False
    model: str | None = None
    prompt: str | None = None
    images: tuple[ImageInfo, ...] = ()
    cache: CacheOutcome | None = None
    # X-Cache similar: the replayed answer's key digest and its photos' Hamming distance.
    cache_source: str | None = None
    cache_distance: int | None = None
    answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    worker_id: str | None = None
    pool: str | None = None  # the worker's pool (canary rollouts)
    error_type: str | None = None
    error_code: str | None = None
    moderation: str | None = None
    api_key_id: str | None = None
    upstream_attempts: int | None = None
    # Structured outputs, tools, n, logprobs and the bookkeeping fields SDKs send
    # (gateway/validation/features.py); the answer's tool calls.
    response_format: str | None = None
    schema_name: str | None = None
    schema_sha256: str | None = None
    end_user_sha256: str | None = None
    request_metadata: dict[str, str] | None = None
    request_options: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    # The status to log when it is not the one sent: a stream our own bug broke after its
    # 200 was sent is logged as the server error it is.
    status: int | None = None
    batch_id: str | None = None  # set for batch lines (gateway/batch/lane.py)

    def fail(self, error_type: str, error_code: str) -> None:
        if self.error_code is None:
            self.error_type, self.error_code = error_type, error_code


def draft_of(state: object) -> InteractionDraft | None:
    """The draft in a request's state (None outside the logged routes)."""
    value = state.get(STATE_KEY) if isinstance(state, dict) else getattr(state, STATE_KEY, None)
    return value if isinstance(value, InteractionDraft) else None
