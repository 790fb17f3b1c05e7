"""A complete answer as the cache stores it and replays it: shared by cache/ and the pipeline.

Kept low (it imports nothing of ours) so the cache, the streams and the pipeline can all
use it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Choices 1, 2, ... of an answer with n > 1: (content, finish_reason) each.
    more: tuple[tuple[str, str], ...] = ()

    @property
    def choices(self) -> list[tuple[str, str]]:
        return [(self.content, self.finish_reason), *self.more]

    @property
    def text(self) -> str:
        """The answer's text for the log: one choice as it is, several under their index."""
        if not self.more:
            return self.content
        return "\n\n".join(f"[{i}] {text}" for i, (text, _) in enumerate(self.choices))

    def encode(self) -> bytes:
        fields: list[object] = [
            self.content, self.finish_reason, self.prompt_tokens, self.completion_tokens
        ]  # fmt: skip
        if self.more:
            fields.append([list(choice) for choice in self.more])
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        try:
            # orjson: every hit decodes one; what encode() wrote always parses the same.
            content, finish, prompt, completion, *rest = orjson.loads(raw)
        except (ValueError, TypeError):
            return None  # written by another format version: treat as a miss
        if not (isinstance(content, str) and isinstance(finish, str)):
            return None
        if not (isinstance(prompt, int) and isinstance(completion, int)):
            return None
        more: list[tuple[str, str]] = []
        for choice in rest[0] if len(rest) == 1 and isinstance(rest[0], list) else ():
            if not (isinstance(choice, list) and len(choice) == 2):
                return None
            if not all(isinstance(part, str) for part in choice):
                return None
            more.append((choice[0], choice[1]))
        if len(rest) > 1 or (rest and not more):
            return None
        return cls(content, finish, prompt, completion, tuple(more))


def _loaded(body: bytes | dict[str, Any]) -> Any:
    return json.loads(body) if isinstance(body, bytes) else body


def answer_from_completion(body: bytes | dict[str, Any]) -> CachedAnswer | None:
    """The cacheable part of a worker's non-streamed answer, as bytes or already parsed
    (every choice, each complete text without tool calls or logprobs); None if it is not
    complete."""
    try:
        completion = _loaded(body)
        choices = sorted(completion["choices"], key=lambda choice: choice["index"])
        texts = [_complete_text(choice) for choice in choices]
        usage = completion["usage"]
        prompt, generated = usage["prompt_tokens"], usage["completion_tokens"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if not texts or None in texts or [c["index"] for c in choices] != list(range(len(texts))):
        return None
    if not isinstance(prompt, int) or not isinstance(generated, int):
        return None
    (content, finish), *more = [text for text in texts if text is not None]
    return CachedAnswer(content, finish, prompt, generated, tuple(more))


def _complete_text(choice: dict[str, object]) -> tuple[str, str] | None:
    message = choice["message"]
    content = message.get("content") if isinstance(message, dict) else None
    finish = choice["finish_reason"]
    if finish not in ("stop", "length") or not isinstance(content, str):
        return None
    if isinstance(message, dict) and message.get("tool_calls"):
        return None
    if choice.get("logprobs") is not None:
        return None
    return content, str(finish)


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call of an answer, as the log keeps it."""

    choice: int
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CompletionSummary:
    """Every choice of an answer (n > 1) and its tool calls: what moderation checks and
    the log records, whether or not the answer is cacheable."""

    texts: dict[int, str]
    tool_calls: tuple[ToolCallRecord, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def text(self) -> str | None:
        """The answer's text: one choice as it is, several each under its index."""
        if not self.texts:
            return None
        if set(self.texts) == {0}:
            return self.texts[0]
        return "\n\n".join(f"[{i}] {text}" for i, text in sorted(self.texts.items()))

    def checked_texts(self) -> list[str]:
        """Each choice's text and each tool call's arguments, checked one by one."""
        return [*self.texts.values(), *(f"{c.name} {c.arguments}" for c in self.tool_calls)]

    def logged_tool_calls(self) -> list[dict[str, object]] | None:
        if not self.tool_calls:
            return None
        return [{"choice": c.choice, "name": c.name, "arguments": c.arguments}
                for c in self.tool_calls]  # fmt: skip


def summary_from_completion(body: bytes | dict[str, Any]) -> CompletionSummary | None:
    """The texts, tool calls and usage of a worker's non-streamed answer, however partial."""
    try:
        completion = _loaded(body)
        choices = completion["choices"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(choices, list):
        return None
    texts: dict[int, str] = {}
    calls: list[ToolCallRecord] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        index = index if isinstance(index, int) else position
        message = choice.get("message") or {}
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts[index] = content
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                name, arguments = function.get("name"), function.get("arguments")
                calls.append(ToolCallRecord(index, str(name or ""), str(arguments or "")))
    usage = completion.get("usage") if isinstance(completion, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    prompt, generated = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return CompletionSummary(
        texts,
        tuple(calls),
        prompt if isinstance(prompt, int) else None,
        generated if isinstance(generated, int) else None,
    )
