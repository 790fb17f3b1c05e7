"""The checkpoint's own chat template, rendered by the gateway for Triton workers.

vLLM's OpenAI server applies the template itself; Triton's vLLM backend takes a finished
prompt (``text_input``), so the gateway renders it, the way transformers'
``apply_chat_template`` does: a sandboxed Jinja environment with trimmed blocks, loop
controls, ``tojson`` and ``raise_exception``. Image parts become ``{"type": "image"}``,
which the template turns into the model's vision placeholders; the images themselves
travel beside the prompt, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import ErrorCode, GatewayError

# Where a checkpoint folder keeps its template, in the order transformers reads them: the
# .jinja file, the processor's chat_template.json (Qwen-VL checkpoints ship this one), then
# the tokenizer's config.
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


def read_chat_template(path: str) -> str:
    """The template's source from a .jinja file, a JSON file holding `chat_template`, or a
    checkpoint folder holding any of them (in transformers' order)."""
    where = Path(path)
    if where.is_dir():
        folder = where
        where = next(
            (folder / name for name in _TEMPLATE_FILES if (folder / name).is_file()),
            folder / _TEMPLATE_FILES[-1],
        )
    if where.suffix != ".json":
        return where.read_text(encoding="utf-8")
    config = json.loads(where.read_text(encoding="utf-8"))
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        raise ValueError(f"{where} holds no chat template")
    return template


class _TemplateError(Exception):
    pass


def _raise(message: str) -> NoReturn:
    raise _TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, source: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for ``messages`` (OpenAI's shape, image parts as {"type": "image"}),
        ending with the assistant's turn. A template's own refusal is our 400."""
        try:
            return self._template.render(messages=messages, add_generation_prompt=True)
        except _TemplateError as exc:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"The model's chat template refused the messages: {exc}",
                param="messages",
            ) from None
        except jinja2.TemplateError as exc:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"The model's chat template could not render the messages ({type(exc).__name__}).",
                param="messages",
            ) from None
