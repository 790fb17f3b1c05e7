"""Parse: request bytes -> a typed request, or one of our 4xx errors.

Error messages are built from the error kind and our own limits, never from the
offending value, so nothing from the payload is echoed back. The typed request is then
checked against the limits and prepared for a worker in prepare.py.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway import json_text
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import MAX_STOP_SEQUENCES, ChatCompletionRequest, VQARequest
from gateway.validation.bounds import check_counts, heavy_body, off_loop_if

_M = TypeVar("_M", ChatCompletionRequest, VQARequest)
# The body-reading endpoints, by the shape they parse: /v1/chat/completions, /v1/vqa.
BodyShape = Literal["chat", "vqa"]
_B = TypeVar("_B", bound=BaseModel)


# --- HTTP body -> Python -------------------------------------------------------------------


def check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise GatewayError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json."
        )


def load_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json_text.loads(raw)
    except (ValueError, RecursionError):
        raise GatewayError(ErrorCode.INVALID_JSON, "The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise GatewayError(ErrorCode.INVALID_JSON, "The body must be a JSON object.")
    return value


async def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; parsed in a thread when large (bounds.py)."""
    return await off_loop_if(heavy_body(raw), lambda: load_json_object(raw))


def parse_chat_sync(raw: bytes, settings: Settings) -> ChatCompletionRequest | VQARequest:
    """The chat endpoint's body, typed: JSON, the message and part counts, validation."""
    data = load_json_object(raw)
    check_counts(data, settings)
    return parse_chat_body(data)


def parse_body_sync(
    raw: bytes, settings: Settings, shape: BodyShape | type[BaseModel]
) -> BaseModel:
    """An endpoint's body, typed (the one entry for the loop, a thread and the child):
    ``shape`` names an inference endpoint's, or is the strict model of another one."""
    if shape == "vqa":
        return parse_vqa_body(load_json_object(raw))
    if shape == "chat":
        return parse_chat_sync(raw, settings)
    assert not isinstance(shape, str)
    return parse_model(shape, load_json_object(raw))


async def parse_chat_request(raw: bytes, settings: Settings) -> ChatCompletionRequest | VQARequest:
    """The chat endpoint's body, in one thread hop when the body is large (its cost grows
    with it). Endpoints parse through offload.BodyParser, which sends a body of many values
    to a process of its own instead."""
    return await off_loop_if(heavy_body(raw), lambda: parse_chat_sync(raw, settings))


def parse_chat_body(data: dict[str, Any]) -> ChatCompletionRequest | VQARequest:
    """The chat endpoint takes OpenAI's format, or the simple shape when there are no messages."""
    if "messages" in data:
        return _validate(ChatCompletionRequest, data)
    if "prompt" in data or "image" in data:
        return _validate(VQARequest, data)
    raise GatewayError(
        ErrorCode.MISSING_MESSAGES,
        "The request needs 'messages' (chat format) or 'image' and 'prompt' (simple format).",
        param="messages",
    )


def parse_vqa_body(data: dict[str, Any]) -> VQARequest:
    return _validate(VQARequest, data)


def parse_model(model: type[_B], data: dict[str, Any]) -> _B:
    """Another strict request model (/v1/match, /v1/batches), with the same 400s."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False, include_input=False), data) from None


def _validate(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False, include_input=False), data) from None


# --- pydantic errors -> our codes and messages ---------------------------------------------

_FIELD_CODES: Final = {
    "max_tokens": ErrorCode.INVALID_MAX_TOKENS,
    "max_completion_tokens": ErrorCode.INVALID_MAX_TOKENS,
    "temperature": ErrorCode.INVALID_TEMPERATURE,
    "top_p": ErrorCode.INVALID_TOP_P,
}
_MISSING_CODES: Final = {
    "messages": ErrorCode.MISSING_MESSAGES,
    "prompt": ErrorCode.MISSING_PROMPT,
    "image": ErrorCode.MISSING_IMAGE,
    "model": ErrorCode.MISSING_MODEL,
}
_EMPTY_TYPES: Final = frozenset({"missing", "too_short", "string_too_short"})
_TYPE_NAMES: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _from_pydantic(errors: list[ErrorDetails], data: dict[str, Any]) -> GatewayError:
    located = [(_param_path(e["loc"], data), e) for e in errors]
    # Report on the first failing field and, within it, the most specific location: for
    # `content` (string or parts), an error inside a part beats "not a string".
    root = located[0][0][:1]
    same_root = [item for item in located if item[0][:1] == root]
    path, first = max(same_root, key=lambda item: len(item[0]))
    if path[:1] == ["metadata"]:
        path = path[:1]  # its keys are the client's: never echoed in a param
    name = path[0] if path and isinstance(path[0], str) else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        code = ErrorCode.UNSUPPORTED_PARAMETER
    elif name in _FIELD_CODES:
        code = _FIELD_CODES[name]
    elif kind in _EMPTY_TYPES and len(path) == 1 and name in _MISSING_CODES:
        code = _MISSING_CODES[name]
    else:
        code = ErrorCode.INVALID_REQUEST
    param = _format_path(path)
    # Union members fail one by one; when they all fail at the same place, say once what
    # the field takes. Metadata's keys and values are the client's: its shape, whole.
    same_place = sum(1 for other, _ in located if other == path)
    last = next((step for step in reversed(path) if isinstance(step, str)), "")
    if same_place > 1 or name == "metadata":
        description = _ALLOWED.get(last, "has an invalid type or value")
    else:
        description = _describe(first)
    return GatewayError(code, f"'{param}' {description}.", param=param or None)


# What a field of several shapes takes, for when none of them matched.
_ALLOWED: Final = {
    "stop": f"must be a string or a list of up to {MAX_STOP_SEQUENCES} strings, none empty",
    "content": "must be a string or a list of 'text' and 'image_url' parts",
    "tool_choice": "must be 'none', 'auto', 'required' or "
    '{"type": "function", "function": {"name": ...}}',
    "metadata": "must be an object of at most 16 keys of at most 64 characters, each value "
    "a string of at most 512 characters",
}


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a supported parameter"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must have at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"has an unknown 'type'; expected {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "needs a 'type' field"
    return "is invalid"


def _param_path(loc: tuple[int | str, ...], data: object) -> list[int | str]:
    """The location in the request, without the union-member labels pydantic inserts.

    Walks the location through the actual input: a step that is a key (or index) of the
    current value is part of the path; anything else is a label and is skipped.
    """
    path: list[int | str] = []
    current: object = data
    for index, step in enumerate(loc):
        last = index == len(loc) - 1
        in_dict = isinstance(current, dict) and isinstance(step, str) and step in current
        in_list = isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current)
        if in_dict or in_list:
            path.append(step)
            current = current[step]  # type: ignore[index]
        elif last and isinstance(current, dict):
            path.append(step)  # a missing or unknown key: name it
    return path


def _format_path(path: list[int | str]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out
