"""The one builder of request bodies: OpenAI chat bodies (text, or images then text) and
the simple VQA body. Tests that need a body build it here instead of spelling it out."""

from __future__ import annotations

from typing import Any

from tests.support.worker import TINY_MODEL_NAME

MODEL = TINY_MODEL_NAME  # served by the cpu-tiny worker and by the fake worker


def image_message(text: str, *uris: str) -> list[dict[str, Any]]:
    """A user message's content: one image part per URI, then the text."""
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return [*parts, {"type": "text", "text": text}]


def chat_body(content: Any = "hello", *, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A chat completion body with one user message; ``extra`` adds top-level fields."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def image_chat_body(text: str, *uris: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A chat completion body whose one user message carries the images, then the text."""
    return chat_body(image_message(text, *uris), model=model, **extra)


def vqa_body(image: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A /v1/vqa body: ``image`` is base64, a data URI or an https URL."""
    return {"image": image, "prompt": prompt, **extra}
