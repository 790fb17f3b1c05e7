"""Issue 25 against the real vLLM engine, through a gateway process: answers in OpenAI's
shape (vLLM's own fields never reach a client), the same whether fresh or replayed from
the cache, and structured answers that strict JSON parsers accept.

The engine's grammar (xgrammar 0.2.8 on this machine) keeps raw control characters out of
JSON strings, so here the JSON promise is checked as a user would meet it; the fake
worker sends such characters on cue (tests/test_upstream_shape.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localstack.processes import LocalProcess, start_gateway
from tests.support.images import data_uri
from tests.support.requests import image_chat_body
from tests.support.worker import LOG_DIR
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "brand": {"type": "string"},
        "material": {"type": "string"},
        "price": {"type": "number"},
    },
    "required": ["brand", "material", "price"],
    "additionalProperties": False,
}
# OpenAI's chat completion as a typed client decodes it: no other field, no null.
COMPLETION: dict[str, Any] = {
    "id": "str",
    "object": "str",
    "created": "int",
    "model": "str",
    "choices": [
        {"index": "int", "message": {"role": "str", "content": "str"}, "finish_reason": "str"}
    ],
    "usage": {"prompt_tokens": "int", "completion_tokens": "int", "total_tokens": "int"},
}
CHUNK_KEYS = {"id", "object", "created", "model", "choices", "usage"}


@pytest.fixture(scope="module")
def gateway(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[LocalProcess]:
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "GATEWAY_REDIS_SOCKET_TIMEOUT_S": "2",  # a busy machine's Redis is no cache bypass
    }
    process = start_gateway([worker_url], LOG_DIR, env=env)
    yield process
    process.stop()


def _types(value: Any) -> Any:
    """The tree of an answer's fields with their JSON types: what a typed decoder sees."""
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__


def _body(question: str, photo_seed: int, **extra: Any) -> dict[str, Any]:
    photo = data_uri(png_bytes(48, 48, seed=photo_seed))
    return image_chat_body(question, photo, **extra)


async def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.post(url + CHAT, json=body)
    assert response.status_code == 200, response.text
    return response


async def _stream(url: str, body: dict[str, Any], **headers: str) -> tuple[list[str], str]:
    """A streamed answer's events, and its X-Cache."""
    async with (
        httpx.AsyncClient(timeout=300) as http,
        http.stream("POST", url + CHAT, json={**body, "stream": True}, headers=headers) as sse,
    ):
        assert sse.status_code == 200
        events = [line[6:] async for line in sse.aiter_lines() if line.startswith("data: ")]
        return events, sse.headers["x-cache"]


def _check_chunks(events: list[str]) -> str:
    """Every chunk in OpenAI's shape; the streamed text."""
    assert events[-1] == "[DONE]"
    text = ""
    for event in events[:-1]:
        chunk = json.loads(event)
        assert set(chunk) <= CHUNK_KEYS, chunk
        assert None not in chunk.values(), chunk
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "finish_reason"}, choice
            assert set(choice["delta"]) <= {"role", "content"}, choice
            text += choice["delta"].get("content", "")
    return text


async def test_answers_carry_openai_fields_only_fresh_or_replayed(gateway: LocalProcess) -> None:
    body = _body(f"What is it? {uuid.uuid4().hex}", 1, max_tokens=6, temperature=0)
    fresh, replayed = [await _post(gateway.url, body) for _ in range(2)]
    assert (fresh.headers["x-cache"], replayed.headers["x-cache"]) == ("miss", "hit")
    assert _types(fresh.json()) == _types(replayed.json()) == COMPLETION
    assert fresh.json()["choices"] == replayed.json()["choices"]
    streamed = {**body, "stream_options": {"include_usage": True}}
    for cache, headers in (("hit", {}), ("bypass", {"Cache-Control": "no-cache"})):
        events, outcome = await _stream(gateway.url, streamed, **headers)
        assert outcome == cache
        _check_chunks(events)
        assert set(json.loads(events[-2])["usage"]) == set(COMPLETION["usage"])


# Seeds whose answers close their JSON within the token limit on the tiny model.
@pytest.mark.parametrize("seed", [3, 8, 19])
async def test_structured_answers_are_strict_json_fresh_cached_and_streamed(
    gateway: LocalProcess, seed: int
) -> None:
    body = _body(
        "Brand, material and price of this bag, as JSON.", seed,
        max_tokens=384, temperature=0.7, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "product",
                                                                "schema": SCHEMA}},
    )  # fmt: skip
    fresh, cached = [await _post(gateway.url, body) for _ in range(2)]
    assert fresh.json()["choices"][0]["finish_reason"] == "stop"
    assert (fresh.headers["x-cache"], cached.headers["x-cache"]) == ("miss", "hit")
    answers = [r.json()["choices"][0]["message"]["content"] for r in (fresh, cached)]
    for cache, headers in (("hit", {}), ("bypass", {"Cache-Control": "no-cache"})):
        events, outcome = await _stream(gateway.url, body, **headers)
        assert outcome == cache
        answers.append(_check_chunks(events))
    assert len(set(answers)) == 1  # the same seed: the same answer, however it came
    assert list(json.loads(answers[0])) == list(SCHEMA["properties"])  # strict: RFC 8259
