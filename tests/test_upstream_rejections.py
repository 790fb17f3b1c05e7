"""Each of vLLM's wordings of a prompt over the context length becomes OpenAI's code with
the numbers it gave (the engine test meets one of them for real); other 4xx stay the
worker's own."""

from __future__ import annotations

import pytest

from gateway.errors import ErrorCode
from gateway.upstream.kserve.translate import triton_error
from gateway.upstream.rejections import worker_rejection


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "This model's maximum context length is 8192 tokens. However, your prompt "
            "contains at least 8193 input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt.",
            "The prompt has 8193 tokens (text and images), more than this model's context "
            "length of 8192 tokens.",
        ),
        (
            "The decoder prompt (length 9000) is longer than the maximum model length of "
            "8192. Make sure that `max_model_len` is no smaller than the number of text tokens.",
            "The prompt has 9000 tokens (text and images), more than this model's context "
            "length of 8192 tokens.",
        ),
        (
            "Input length (9001) exceeds model's maximum context length (8192).",
            "The prompt has 9001 tokens",
        ),
        (
            "This model's maximum context length is 8192 tokens. However, your prompt "
            "contains 90000 characters (more than 65536 characters, which is the upper bound "
            "for 8192 input tokens). Please reduce the length of the input prompt.",
            "The prompt is longer than this model's context length of 8192 tokens.",
        ),
    ],
)
def test_vllms_wordings_are_context_length_exceeded(text: str, says: str) -> None:
    error = worker_rejection(400, text, "input_tokens")
    assert (error.code, error.status, error.param) == (
        ErrorCode.CONTEXT_LENGTH_EXCEEDED,
        400,
        "messages",
    )
    assert error.message.startswith(says)
    assert "max_tokens" in error.message  # what to do


def test_other_rejections_keep_the_workers_status_and_text() -> None:
    error = worker_rejection(422, "worker says no", "x")
    assert (error.code, error.status, error.message, error.param) == (
        ErrorCode.UPSTREAM_REJECTED,
        422,
        "worker says no",
        "x",
    )


def test_tritons_error_event_for_a_long_prompt_is_context_length_exceeded() -> None:
    event = {
        "error": "The decoder prompt (length 9000) is longer than the maximum model length "
        "of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens."
    }
    error = triton_error(event)
    assert error is not None
    assert (error.code, error.status) == (ErrorCode.CONTEXT_LENGTH_EXCEEDED, 400)
    other = triton_error({"error": "CUDA out of memory"})
    assert other is not None
    assert other.code is ErrorCode.UPSTREAM_ERROR
