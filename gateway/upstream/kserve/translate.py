"""OpenAI chat requests to Triton's vLLM-backend requests, and Triton's events back.

The request a vLLM worker would get (the gateway's validated body) becomes one for the
official vLLM backend's interface: the rendered prompt as ``text_input``, each image's
base64 as an element of ``image``, the sampling fields as ``sampling_parameters`` JSON,
``exclude_input_in_output`` and the ``return_*`` flags for the finish reason and token
counts. Always through ``generate_stream`` (``generate`` refuses a decoupled model): a
non-streamed request sets ``stream`` false and gets one event with the whole answer.

A field the Triton path cannot honour is refused with our 400 naming the field and the
engine, never dropped: tools (no tool-call parser behind Triton), logprobs (the backend's
shape carries no top alternatives in OpenAI's form).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from gateway.errors import ErrorCode, GatewayError
from gateway.upstream.kserve.template import ChatTemplate
from gateway.upstream.rejections import context_length_error

ENGINE: Final = "triton"
# Our body's sampling fields and their SamplingParams names (None: the same name).
_SAMPLING: Final[dict[str, str | None]] = {
    "temperature": None,
    "top_p": None,
    "presence_penalty": None,
    "frequency_penalty": None,
    "seed": None,
    "n": None,
    "ignore_eos": None,
    "min_tokens": None,
}
_UNSUPPORTED: Final = ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs")
# Triton's finish reasons (vLLM's, as str(); "None" while a choice is still going).
_FINISH: Final = {"stop": "stop", "length": "length"}


def _unsupported(param: str) -> GatewayError:
    return GatewayError(
        ErrorCode.INVALID_REQUEST,
        f"'{param}' is not supported by the {ENGINE} engine that serves this model.",
        param=param,
    )


def _template_messages(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages as the template reads them, and the images' base64 in order."""
    messages: list[dict[str, Any]] = []
    images: list[str] = []
    for i, message in enumerate(payload.get("messages", [])):
        if message.get("tool_calls"):
            raise _unsupported(f"messages[{i}].tool_calls")
        if message.get("role") == "tool":
            raise _unsupported(f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for part in content:
                if part.get("type") == "image_url":
                    # A data URI (the gateway has checked and inlined every image).
                    images.append(part["image_url"]["url"].split(",", 1)[1])
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            content = parts
        messages.append({"role": message.get("role"), "content": content})
    return messages, images


def sampling_parameters(payload: dict[str, Any]) -> dict[str, Any]:
    """vLLM SamplingParams fields for the request (the official backend's JSON)."""
    for name in _UNSUPPORTED:
        if payload.get(name) not in (None, False):
            raise _unsupported(name)
    params: dict[str, Any] = {}
    for name, target in _SAMPLING.items():
        if payload.get(name) is not None:
            params[target or name] = payload[name]
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if limit is not None:
        params["max_tokens"] = limit
    stop = payload.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = payload.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        params["structured_outputs"] = json.dumps({"json": fmt["json_schema"]["schema"]})
    elif fmt.get("type") == "json_object":
        params["structured_outputs"] = json.dumps({"json_object": True})
    return params


def generate_body(payload: dict[str, Any], template: ChatTemplate) -> bytes:
    """The generate_stream body for an OpenAI chat request (the gateway's worker body)."""
    params = sampling_parameters(payload)
    messages, images = _template_messages(payload)
    body: dict[str, Any] = {
        "text_input": template.render(messages),
        "stream": bool(payload.get("stream")),
        "exclude_input_in_output": True,
        "sampling_parameters": json.dumps(params),
        "return_finish_reason": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    if images:
        body["image"] = images
    return orjson.dumps(body)


def _elements(value: Any) -> list[Any]:
    """A Triton output as a list (a one-element tensor may come as a scalar)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def triton_error(event: dict[str, Any]) -> GatewayError | None:
    """Our error for an event that carries Triton's (a model's failure or refusal)."""
    message = event.get("error")
    if message is None:
        return None
    # vLLM inside Triton words a prompt over the context length as it does over HTTP.
    refused = context_length_error(str(message))
    if refused is not None:
        return refused
    return GatewayError(ErrorCode.UPSTREAM_ERROR, f"The worker failed: {str(message)[:1000]}")


@dataclass
class EventTranslator:
    """Triton's events for one request, turned into OpenAI chat completion chunks (a
    stream) or one completion (``answer``), with usage from the token counts."""

    model: str
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    texts: dict[int, list[str]] = field(default_factory=dict)
    finishes: dict[int, str | None] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _started: set[int] = field(default_factory=set)

    def _observe(self, event: dict[str, Any]) -> list[tuple[int, str, str | None]]:
        """(choice, new text, finish reason) per choice the event carries."""
        error = triton_error(event)
        if error is not None:
            raise error
        inputs = _elements(event.get("num_input_tokens"))
        if inputs:
            self.prompt_tokens = int(inputs[0])
        self.completion_tokens += sum(int(n) for n in _elements(event.get("num_output_tokens")))
        reasons = _elements(event.get("finish_reason"))
        found = []
        for index, text in enumerate(_elements(event.get("text_output"))):
            reason = reasons[index] if index < len(reasons) else None
            finish = _FINISH.get(str(reason)) if reason not in (None, "None") else None
            if reason not in (None, "None") and finish is None:
                raise GatewayError(
                    ErrorCode.UPSTREAM_ERROR, f"The worker ended the answer ({reason})."
                )
            self.texts.setdefault(index, []).append(str(text))
            if finish is not None:
                self.finishes[index] = finish
            found.append((index, str(text), finish))
        return found

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def chunks(self, event: dict[str, Any]) -> bytes:
        """The OpenAI chunks for one Triton event (an error event: our SSE error event)."""
        try:
            found = self._observe(event)
        except GatewayError as error:
            return error.sse_event()
        out = []
        for index, text, finish in found:
            first = index not in self._started
            self._started.add(index)
            if text or first:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                out.append(self._chunk([choice]))
            if finish is not None:
                end = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
                out.append(self._chunk([end]))
        return b"".join(out)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def end(self) -> bytes:
        """What follows the last event: the usage chunk (the gateway always asks the
        worker for it) and [DONE]."""
        return self._chunk([], usage=self.usage()) + b"data: [DONE]\n\n"

    def answer(self, events: list[dict[str, Any]]) -> bytes:
        """A non-streamed completion from all of a request's events (raises our error
        for an event that carries one)."""
        for event in events:
            self._observe(event)
        if not self.texts:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's answer was empty.")
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(parts)},
                "logprobs": None,
                "finish_reason": self.finishes.get(index),
            }
            for index, parts in sorted(self.texts.items())
        ]
        return orjson.dumps(
            {
                "id": self.completion_id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self.usage(),
            }
        )


class EventReader:
    """Splits Triton's SSE bytes (cut anywhere by the network) into parsed events."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n\n")
        return [event for block in complete if (event := _parse(block)) is not None]

    def close(self) -> list[dict[str, Any]]:
        """A last event without its blank line."""
        rest, self._buffer = self._buffer, b""
        event = _parse(rest)
        return [] if event is None else [event]


def _parse(block: bytes) -> dict[str, Any] | None:
    lines = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        event = orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return {"error": "the worker sent an event that is not JSON"}
    return event if isinstance(event, dict) else {"error": "the worker sent a malformed event"}
