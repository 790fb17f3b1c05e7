"""A worker's 4xx as one of our errors: its own status and message, and OpenAI's code
where the worker's text says which case it is (a prompt over the context length).

vLLM words the context case several ways, by where it finds it (text length before
tokenizing, tokens after, the engine's own check); each holds the limit and, mostly,
the prompt's size. The message we send is ours, with the numbers the worker gave.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import ErrorCode, GatewayError

# (the limit, the prompt's token count or None) from each of vLLM's wordings.
_CONTEXT_PATTERNS: Final = (
    # renderers/params.py, after tokenizing: "...maximum context length is 8192 tokens.
    # However, your prompt contains [at least ]9000 input tokens, ..."
    re.compile(
        r"maximum context length is (?P<limit>\d+) tokens\. However, your prompt contains "
        r"(?:at least )?(?P<tokens>\d+) input tokens"
    ),
    # v1/engine/input_processor.py: "The decoder prompt (length 9000) is longer than the
    # maximum model length of 8192." (also "... plus the number of requested output ...")
    re.compile(
        r"prompt \(length (?P<tokens>\d+)\)[^.]*? longer than the maximum model length of "
        r"(?P<limit>\d+)"
    ),
    # entrypoints' get_max_tokens: "Input length (9000) exceeds model's maximum context
    # length (8192)."
    re.compile(
        r"Input length \((?P<tokens>\d+)\) exceeds model's maximum context length "
        r"\((?P<limit>\d+)\)"
    ),
    # Older vLLM: "...maximum context length is 8192 tokens. However, you requested 9000
    # tokens (8744 in the messages, 256 in the completion)."
    re.compile(
        r"maximum context length is (?P<limit>\d+) tokens\. However, you requested \d+ "
        r"tokens \((?P<tokens>\d+) in the messages"
    ),
    # Before tokenizing, by characters: the limit, no token count.
    re.compile(r"maximum context length is (?P<limit>\d+) tokens"),
)
_ADVICE: Final = (
    "Shorten the prompt or the conversation, send fewer or smaller images "
    '(image_url.detail: "low"), or lower max_tokens.'
)


def worker_rejection(status: int, message: str | None, param: str | None) -> GatewayError:
    """The error for a worker's 4xx answer (``message`` and ``param`` from its body)."""
    context = context_length_error(message or "")
    if context is not None:
        return context
    return GatewayError(
        ErrorCode.UPSTREAM_REJECTED,
        message or "The worker rejected the request.",
        param=param,
        upstream_status=status,
    )


def context_length_error(message: str) -> GatewayError | None:
    """context_length_exceeded when a worker's error text (vLLM's, behind HTTP or Triton)
    says the prompt is over the context length; else None."""
    context = _context_length(message)
    if context is None:
        return None
    return GatewayError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, context, param="messages")


def _context_length(message: str) -> str | None:
    for pattern in _CONTEXT_PATTERNS:
        found = pattern.search(message)
        if found is None:
            continue
        limit = int(found["limit"])
        tokens = found.groupdict().get("tokens")
        if tokens is None:
            size = "The prompt is longer than"
        else:
            size = f"The prompt has {int(tokens)} tokens (text and images), more than"
        return f"{size} this model's context length of {limit} tokens. {_ADVICE}"
    return None
