"""Schemathesis hooks for the fuzz run (SCHEMATHESIS_HOOKS=tests.support.fuzz_hooks).

Generated from the spec alone, almost every body names a model the gateway does not serve
or carries random text where base64 belongs, so the run would only ever meet the first
validation checks (404, invalid_base64). Here each generated body is, at hypothesis's
choice, sent as generated, with the served model, or with the served model and a real
image in every image field: the rest of the generated values (sampling, limits, unicode
in prompts, odd part lists) then reach the cache, coalescing, the worker and the log.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import schemathesis
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

MODEL = "qwen3-vl-tiny"


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


_IMAGE_B64 = base64.b64encode(_png()).decode()
_IMAGE_URI = "data:image/png;base64," + _IMAGE_B64


# Only values of the right kind are replaced (a model that is a string, an image that is a
# non-empty string): a negative case (wrong type, empty, missing) must stay negative.


def _with_model(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return {**body, "model": MODEL}
    return body


def _with_images(body: Any) -> Any:
    """The served model, and every image field replaced by a real PNG."""
    body = _with_model(body)
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("image"), str) and body["image"]:
        body = {**body, "image": _IMAGE_B64}
    messages = body.get("messages")
    if isinstance(messages, list):
        body = {**body, "messages": [_message_with_images(m) for m in messages]}
    return body


def _message_with_images(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    parts = [
        {**part, "image_url": {**part["image_url"], "url": _IMAGE_URI}}
        if isinstance(part, dict)
        and isinstance(part.get("image_url"), dict)
        and isinstance(part["image_url"].get("url"), str)
        else part
        for part in message["content"]
    ]
    return {**message, "content": parts}


@schemathesis.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from([body, _with_model(body), _with_images(body)])


_INT: TypeAdapter[int] = TypeAdapter(int)


def _at_most_one(value: Any) -> Any:
    """A value the server reads as an integer over 1 becomes 1, in its own type (FastAPI
    reads the last of repeated query values, leniently: " 2_839 " is 2839)."""
    if isinstance(value, list):
        return [_at_most_one(item) for item in value]
    try:
        number = _INT.validate_python(value)
    except ValidationError:
        return value  # a negative case stays negative
    if number <= 1:
        return value
    return "1" if isinstance(value, str) else 1


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: Any) -> Any:
    """/readyz?min_workers=N answers 503 by design when fewer than N workers are healthy
    (a probe's question, documented): the run has one worker, so ask for at most one."""
    operation = context.operation
    if operation is None or operation.path != "/readyz" or not isinstance(query, dict):
        return query
    if "min_workers" not in query:
        return query
    return {**query, "min_workers": _at_most_one(query["min_workers"])}
