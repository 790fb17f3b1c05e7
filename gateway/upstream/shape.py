"""A worker's answer in OpenAI's chat completion shape, streamed or not.

vLLM adds fields of its own to every answer (``token_ids``, ``routed_experts``,
``prompt_text``, ``prompt_token_ids``, ``prompt_logprobs``, ``kv_transfer_params``,
``ec_transfer_params``, ``metrics``, ``stop_reason``, ``reasoning``, nulls for OpenAI's
optional fields, its own ``system_fingerprint``): typed clients in strict languages refuse
unknown or unexpected null fields. A client gets OpenAI's fields only, optional ones only
when set (protocol.ChatCompletionResponse and ChatCompletionChunk, in the OpenAPI
schema): the shape a cached answer is replayed in (cache/replay.py), so a miss, a hit and
a coalesced answer look the same.

Structured outputs (``response_format`` json_object/json_schema) and tool-call arguments
are JSON the client parses: raw control characters in their strings are escaped here
(json_repair.py), in every choice and every streamed delta, before the cache or the
interaction log sees the answer; ``on_repair`` counts each answer part repaired.

An answer whose fields have the wrong types (``"tool_calls": 5``) is the worker's fault:
a 502, never passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, Self

import orjson

from gateway import json_text
from gateway.errors import ErrorCode, GatewayError
from gateway.upstream.json_repair import StringEscaper

CONTENT: Final = "content"
TOOL_ARGUMENTS: Final = "tool_arguments"
REPAIRED_PARTS: Final = (CONTENT, TOOL_ARGUMENTS)

_TOP: Final = ("id", "object", "created", "model")
_USAGE: Final = ("prompt_tokens", "completion_tokens", "total_tokens")
_LOGPROB: Final = ("token", "logprob", "bytes")
_DONE: Final = b"[DONE]"


class _Malformed(Exception):
    pass


def malformed() -> GatewayError:
    return GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's answer was malformed.")


@dataclass(slots=True)
class Repairs:
    """The JSON escapers of one answer: per (choice, part, tool call) for a stream."""

    structured: bool  # the content is JSON (response_format json_object / json_schema)
    on_repair: Callable[[str], None] | None = None
    _escapers: dict[tuple[int, str, int], StringEscaper] = field(default_factory=dict)

    def text(self, value: object, choice: int, part: str, call: int = 0) -> str | None:
        """``value`` checked as a string (None stays None), repaired when it is JSON."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Malformed
        if part == CONTENT and not self.structured:
            return value
        escaper = self._escapers.get((choice, part, call))
        if escaper is None:
            escaper = self._escapers[(choice, part, call)] = StringEscaper()
        before = escaper.repaired
        repaired = escaper.feed(value)
        if before == 0 and escaper.repaired and self.on_repair is not None:
            self.on_repair(part)
        return repaired


def _pick(source: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: source[key] for key in keys if source.get(key) is not None}


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed
    return value


def _usage(value: object) -> dict[str, Any]:
    usage = _pick(_dict(value), _USAGE)
    if not all(isinstance(count, int) for count in usage.values()):
        raise _Malformed
    return usage


def _logprobs(value: object) -> dict[str, Any]:
    content = []
    for item in _list(_dict(value).get("content") or []):
        entry = _pick(_dict(item), _LOGPROB)
        top = [_pick(_dict(alt), _LOGPROB) for alt in _list(item.get("top_logprobs") or [])]
        content.append({**entry, "top_logprobs": top})
    return {"content": content}


def _tool_calls(value: object, choice: int, repairs: Repairs, delta: bool) -> list[Any]:
    calls = []
    for position, raw in enumerate(_list(value)):
        call = _dict(raw)
        index = call.get("index", position)
        shaped = _pick(call, ("index", "id", "type") if delta else ("id", "type"))
        function = _dict(call.get("function") or {})
        out: dict[str, Any] = {}
        if isinstance(name := function.get("name"), str):
            out["name"] = name
        elif name is not None:
            raise _Malformed
        arguments = repairs.text(function.get("arguments"), choice, TOOL_ARGUMENTS, index)
        if arguments is not None:
            out["arguments"] = arguments
        if out or not delta:
            shaped["function"] = out
        calls.append(shaped)
    return calls


def _choice(raw: object, position: int, repairs: Repairs, delta: bool) -> dict[str, Any]:
    choice = _dict(raw)
    index = choice.get("index", position)
    if not isinstance(index, int):
        raise _Malformed
    source = _dict(choice.get("delta" if delta else "message") or {})
    message: dict[str, Any] = {}
    if delta:
        message = _pick(source, ("role",))
        content = repairs.text(source.get("content"), index, CONTENT)
        if content is not None:
            message["content"] = content
    else:
        message = {
            "role": source.get("role", "assistant"),
            "content": repairs.text(source.get("content"), index, CONTENT),
        }
    if source.get("tool_calls"):
        message["tool_calls"] = _tool_calls(source["tool_calls"], index, repairs, delta)
    shaped: dict[str, Any] = {"index": index, "delta" if delta else "message": message}
    if choice.get("logprobs") is not None:
        shaped["logprobs"] = _logprobs(choice["logprobs"])
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise _Malformed
    shaped["finish_reason"] = finish
    return shaped


def _shape(event: dict[str, Any], repairs: Repairs, delta: bool) -> dict[str, Any]:
    shaped = _pick(event, _TOP)
    choices = _list(event.get("choices", []))
    shaped["choices"] = [_choice(c, i, repairs, delta) for i, c in enumerate(choices)]
    if event.get("usage") is not None:
        shaped["usage"] = _usage(event["usage"])
    return shaped


@dataclass(frozen=True, slots=True)
class ShapedCompletion:
    body: bytes  # what the client gets
    data: dict[str, Any]  # the same, parsed (the answer, the log and moderation read it)


def shape_completion(raw: bytes, repairs: Repairs) -> ShapedCompletion:
    """A worker's non-streamed answer in OpenAI's shape (raises our 502 if malformed)."""
    try:
        data = _shape(_dict(json_text.loads(raw)), repairs, delta=False)
    except (_Malformed, ValueError, RecursionError):
        raise malformed() from None
    return ShapedCompletion(orjson.dumps(data), data)


def shape_event(data: bytes, repairs: Repairs) -> bytes:
    """One SSE event's data: a chunk in OpenAI's shape; anything else (the end, an error
    event, what does not parse) as the worker sent it."""
    if data == _DONE:
        return data
    try:
        event = json_text.loads(data)
    except ValueError:
        return data
    if not isinstance(event, dict) or "error" in event:
        return data
    try:
        return orjson.dumps(_shape(event, repairs, delta=True))
    except _Malformed:
        raise malformed() from None


class _Chunks(Protocol):  # streams.ChunkStream, which this layer may not import
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class ShapedStream:
    """A worker's SSE stream, event by event in OpenAI's shape (see shape_event)."""

    def __init__(self, upstream: _Chunks, repairs: Repairs) -> None:
        self._upstream = upstream
        self._chunks = upstream.__aiter__()
        self._repairs = repairs
        self._buffer = b""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                rest, self._buffer = self._buffer, b""
                if rest.strip():
                    return self._event(rest)  # a last event without its blank line
                raise
            self._buffer += chunk
            *events, self._buffer = self._buffer.split(b"\n\n")
            if events:
                return b"".join(self._event(event) + b"\n\n" for event in events)

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: "):
            return event
        return b"data: " + shape_event(event[6:].strip(), self._repairs)

    def close(self) -> None:
        self._upstream.close()
