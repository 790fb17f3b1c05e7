"""Render a cached (or coalesced) answer in the client's shape.

A replay gets a fresh id and `created`, as a new completion would: clients use
the id to tell answers apart and must not see two with the same one.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gateway.answers import CachedAnswer


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _usage(answer: CachedAnswer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_json(answer: CachedAnswer, model: str) -> bytes:
    return _dumps(
        {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.content},
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": _usage(answer),
        }
    )


def completion_sse(answer: CachedAnswer, model: str, include_usage: bool) -> list[bytes]:
    """The answer as OpenAI stream chunks: role, content, finish, usage, [DONE]."""
    base = {
        "id": new_completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + _dumps({**base, "choices": choices, **extra}) + b"\n\n"

    events = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": answer.content}, None),
        chunk({}, answer.finish_reason),
    ]
    if include_usage:
        events.append(
            b"data: " + _dumps({**base, "choices": [], "usage": _usage(answer)}) + b"\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return events
