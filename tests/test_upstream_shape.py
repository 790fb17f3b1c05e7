"""Issue 25: a worker's answer reaches the client in OpenAI's shape, and every structured
answer is RFC 8259 JSON.

The escaper and the shaping are tested on their own, then through a gateway in front of
the fake worker, which can send raw control characters on cue (the real engine's grammar
on this machine does not: tests/test_openai_features_engine.py checks the same promises
against it), streamed and not, fresh, cached and coalesced.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ChatCompletionChunk, ChatCompletionResponse
from gateway.upstream.json_repair import StringEscaper, escape_control_characters
from gateway.upstream.shape import Repairs, shape_completion, shape_event
from tests.doubles.fake_worker import FakeWorker
from tests.support.metrics import scrape
from tests.support.requests import chat_body
from tests.support.servers import run_gateway
from tests.support.sse import read_stream

CHAT = "/v1/chat/completions"
SCHEMA = {
    "type": "object",
    "properties": {
        "brand": {"type": "string"},
        "material": {"type": "string"},
        "price": {"type": "number"},
    },
    "required": ["brand", "material", "price"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "product", "schema": SCHEMA}}


# Every escape json.dumps writes, read left to right: an escaped backslash is one escape,
# so the "\\r" of a backslash followed by "r" is never taken for a carriage return.
_ESCAPE = re.compile(r'\\(?:u[0-9a-f]{4}|["\\/bfnrt])')


def _raw_json(value: dict[str, str]) -> str:
    """JSON as a grammar backend may write it: control characters raw inside strings."""

    def unescape_control(match: re.Match[str]) -> str:
        char = str(json.loads(f'"{match.group()}"'))
        return char if ord(char) < 32 else match.group()

    return _ESCAPE.sub(unescape_control, json.dumps(value, ensure_ascii=False))


# --- the escaper ---------------------------------------------------------------------------


def test_control_characters_inside_strings_are_escaped_and_nothing_else() -> None:
    raw = '{"brand":"Gu\x01cci\tline\nbreak","price":12}\n'
    repaired, count = escape_control_characters(raw)
    assert repaired == '{"brand":"Gu\\u0001cci\\tline\\nbreak","price":12}\n'
    assert count == 3
    assert json.loads(repaired) == json.loads(raw, strict=False)
    with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
        json.loads(raw)  # strict, as the SDKs parse
    # Quotes and backslashes already escaped keep their meaning.
    tricky = '{"a":"say \\"hi\\"\x02","b":"\\\\\x03"}'
    assert json.loads(escape_control_characters(tricky)[0]) == json.loads(tricky, strict=False)
    assert escape_control_characters('{"ok":"plain"}') == ('{"ok":"plain"}', 0)


@given(
    st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=4),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
@example({"": "\\r"}, [])  # a backslash, then "r": the helper once made it "\\" + CR
def test_escaping_is_lossless_wherever_the_text_is_cut(
    value: dict[str, str], cuts: list[int]
) -> None:
    raw = _raw_json(value)
    escaper = StringEscaper()
    bounds = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    pieces = [escaper.feed(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    assert json.loads("".join(pieces)) == value  # strict: every control character escaped


# --- the shape -----------------------------------------------------------------------------

# vLLM 0.32's answer to a chat completion, private fields and all (captured from the worker).
VLLM_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-8de1a8ccbc8cb496",
    "object": "chat.completion",
    "created": 1796541523,
    "model": "qwen3-vl-tiny",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": '{"brand":"a\x01b"}',
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
    ],
    "service_tier": None,
    "system_fingerprint": "vllm-0.32.0-0ead1d0c",
    "usage": {
        "prompt_tokens": 16,
        "total_tokens": 21,
        "completion_tokens": 5,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    },
    "prompt_logprobs": None,
    "prompt_token_ids": None,
    "prompt_text": None,
    "kv_transfer_params": None,
    "ec_transfer_params": None,
    "metrics": None,
}


def test_a_worker_answer_keeps_openai_fields_only() -> None:
    repaired: list[str] = []
    shaped = shape_completion(json.dumps(VLLM_ANSWER).encode(), Repairs(True, repaired.append))
    assert (
        json.loads(shaped.body)
        == shaped.data
        == {
            "id": "chatcmpl-8de1a8ccbc8cb496",
            "object": "chat.completion",
            "created": 1796541523,
            "model": "qwen3-vl-tiny",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"brand":"a\\u0001b"}'},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 16, "completion_tokens": 5, "total_tokens": 21},
        }
    )
    assert repaired == ["content"]
    ChatCompletionResponse.model_validate(shaped.data)  # as documented in /openapi.json
    plain = shape_completion(json.dumps(VLLM_ANSWER).encode(), Repairs(False))
    assert plain.data["choices"][0]["message"]["content"] == '{"brand":"a\x01b"}'  # text


def test_a_chunk_keeps_openai_fields_only() -> None:
    chunk = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x\x02"}, "logprobs": None,
                     "finish_reason": None, "token_ids": None}],
        "prompt_token_ids": None, "prompt_text": None,
    }  # fmt: skip
    shaped = json.loads(shape_event(json.dumps(chunk).encode(), Repairs(False)))
    assert shaped == {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x\x02"}, "finish_reason": None}],
    }  # fmt: skip
    ChatCompletionChunk.model_validate(shaped)
    for passed in (b"[DONE]", b'{"error": {"message": "x"}}', b"not json"):
        assert shape_event(passed, Repairs(False)) == passed


@pytest.mark.parametrize(
    "choice",
    [
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": 5}},
        {"index": 0, "message": {"role": "assistant", "content": 7}},
        {"index": "0", "message": {"role": "assistant", "content": "x"}},
    ],
)
def test_a_malformed_worker_answer_is_our_502(choice: dict[str, Any]) -> None:
    body = json.dumps({**VLLM_ANSWER, "choices": [choice]}).encode()
    with pytest.raises(GatewayError) as caught:
        shape_completion(body, Repairs(False))
    assert (caught.value.code, caught.value.status) == (ErrorCode.UPSTREAM_ERROR, 502)


# --- through a gateway ------------------------------------------------------------------------


def _structured(prompt: str, **extra: Any) -> dict[str, Any]:
    return chat_body(prompt, temperature=0, response_format=JSON_SCHEMA, **extra)


async def test_every_structured_answer_is_strict_json_fresh_cached_and_coalesced(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    value = {"brand": "Gu\x01cci", "material": "lea\x1fther\n", "price": "12"}
    prompt, streamed = f"describe {uuid.uuid4().hex}", f"stream {uuid.uuid4().hex}"
    fake_worker.scripts[prompt] = f"fake:sleepsay:2:{_raw_json(value)}"
    fake_worker.scripts[streamed] = f"fake:say:{_raw_json(value)}"  # cut every 4 characters
    namespace = f"test-shape-{uuid.uuid4().hex[:8]}"
    async with run_gateway(
        fake_worker.url, cache_enabled=True, cache_namespace=namespace, redis_socket_timeout_s=2
    ) as url:
        # Two at once: the leader's answer, and the one shared with its waiter.
        first, second = await asyncio.gather(
            http.post(url + CHAT, json=_structured(prompt)),
            http.post(url + CHAT, json=_structured(prompt)),
        )
        assert sorted(r.headers["x-cache"] for r in (first, second)) == ["coalesced", "miss"]
        hit = await http.post(url + CHAT, json=_structured(prompt))
        assert hit.headers["x-cache"] == "hit"  # stored: it is JSON now
        replayed = await read_stream(url, _structured(prompt, stream=True))
        fresh = await read_stream(url, _structured(streamed, stream=True))
        samples = await scrape(http, url)
    for response in (first, second, hit):
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == value
    for stream in (replayed, fresh):
        deltas = [json.loads(e)["choices"] for e in stream.events[:-1]]
        text = "".join(c[0]["delta"].get("content", "") for c in deltas if c)
        assert json.loads(text) == value
    assert samples['gateway_json_repairs_total{part="content"}'] == 2  # one per generation


async def test_plain_text_answers_are_left_as_they_are(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    prompt = f"plain {uuid.uuid4().hex}"
    fake_worker.scripts[prompt] = 'fake:say:a "quote" and a\x01control'
    async with run_gateway(fake_worker.url) as url:
        response = await http.post(url + CHAT, json=chat_body(prompt))
    assert response.json()["choices"][0]["message"]["content"] == 'a "quote" and a\x01control'
