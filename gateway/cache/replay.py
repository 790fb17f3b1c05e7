"""Render a cached (or coalesced) answer in the client's shape.

A replay gets a fresh id and `created`, as a new completion would: clients use
the id to tell answers apart and must not see two with the same one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.answers import CachedAnswer


def _dumps(value: dict[str, Any]) -> bytes:
    # Compact UTF-8, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it, in
    # C: a replay is most of a cache hit's own work.
    return orjson.dumps(value)


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
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
                for index, (content, finish) in enumerate(answer.choices)
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

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choices = [{"index": index, "delta": delta, "finish_reason": finish}]
        return b"data: " + _dumps({**base, "choices": choices}) + b"\n\n"

    events = []
    for index, (content, finish) in enumerate(answer.choices):  # n > 1: one after another
        events += [
            chunk(index, {"role": "assistant", "content": ""}, None),
            chunk(index, {"content": content}, None),
            chunk(index, {}, finish),
        ]
    if include_usage:
        events.append(
            b"data: " + _dumps({**base, "choices": [], "usage": _usage(answer)}) + b"\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return events
