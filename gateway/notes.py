"""What the pipeline's stages learn about a request, written into its interaction draft
(the log row: gateway/interactions/draft.py)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.answers import CachedAnswer, CompletionSummary
from gateway.interactions.draft import InteractionDraft
from gateway.validation.prepare import PreparedRequest


def note_request(draft: InteractionDraft, model: str | None, prompt: str, stream: bool) -> None:
    draft.model, draft.prompt, draft.stream = model, prompt, stream


def note_answer(draft: InteractionDraft, answer: CachedAnswer) -> None:
    draft.answer = answer.text
    draft.prompt_tokens, draft.completion_tokens = answer.prompt_tokens, answer.completion_tokens


def note_summary(draft: InteractionDraft, summary: CompletionSummary) -> None:
    """Every choice (n > 1) and tool call; choice 0 alone is what the cache keeps."""
    if summary.text is not None:
        draft.answer = summary.text
    draft.tool_calls = summary.logged_tool_calls()
    if summary.completion_tokens is not None:
        draft.prompt_tokens = summary.prompt_tokens
        draft.completion_tokens = summary.completion_tokens


def note_features(draft: InteractionDraft, prepared: PreparedRequest) -> None:
    features = prepared.features
    draft.response_format = features.response_format
    draft.schema_name, draft.schema_sha256 = features.schema_name, features.schema_sha256
    draft.end_user_sha256 = features.end_user_sha256
    draft.request_metadata = features.metadata
    draft.request_options = features.options


def note_worker(
    draft: InteractionDraft, pool_of: Callable[[str], str | None]
) -> Callable[[str], None]:
    """Called once per attempt: the row keeps the last worker, its pool and the attempt
    count."""

    def note(worker_url: str) -> None:
        draft.worker_id = worker_url
        draft.pool = pool_of(worker_url)
        draft.upstream_attempts = (draft.upstream_attempts or 0) + 1

    return note
