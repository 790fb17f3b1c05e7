"""A complete answer as the cache stores it and replays it: shared by cache/ and the pipeline.

Kept low (it imports nothing of ours) so the cache, the streams and the pipeline can all
use it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def encode(self) -> bytes:
        return json.dumps(
            [self.content, self.finish_reason, self.prompt_tokens, self.completion_tokens],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        try:
            content, finish, prompt, completion = json.loads(raw)
        except (ValueError, TypeError):
            return None  # written by another format version: treat as a miss
        if not (isinstance(content, str) and isinstance(finish, str)):
            return None
        if not (isinstance(prompt, int) and isinstance(completion, int)):
            return None
        return cls(content, finish, prompt, completion)


def answer_from_completion(body: bytes) -> CachedAnswer | None:
    """The cacheable part of a worker's non-streamed answer; None if it is not complete."""
    try:
        completion = json.loads(body)
        choice = completion["choices"][0]
        content = choice["message"]["content"]
        finish = choice["finish_reason"]
        usage = completion["usage"]
        prompt, generated = usage["prompt_tokens"], usage["completion_tokens"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if finish not in ("stop", "length") or not isinstance(content, str):
        return None
    if not isinstance(prompt, int) or not isinstance(generated, int):
        return None
    return CachedAnswer(content, finish, prompt, generated)
