"""OpenAI API breadth against the real vLLM CPU engine, through a gateway process, with the
official ``openai`` SDK: structured outputs, bookkeeping fields, logprobs, n and tools
(issue 17). Grammar enforcement works even with the tiny model's random weights; closed
choices (``enum``) keep answers free of the raw control characters xgrammar lets into
free strings, which strict parsers refuse."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall
from PIL import Image
from pydantic import BaseModel, ConfigDict

from gateway.ratelimit.estimate import image_tokens
from gateway.validation.detail import low_detail_size
from localstack.processes import LocalProcess, start_gateway
from tests.support.images import data_uri
from tests.support.mariadb import logged_rows
from tests.support.requests import MODEL, image_chat_body
from tests.support.sse import read_stream
from tests.support.worker import LOG_DIR, finished_requests
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine

SECRET = "end-user-hash-secret-for-tests"


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid")
    material: Literal["leather", "canvas", "cotton", "synthetic"]
    style: Literal["casual", "formal", "sport"]
    audience: Literal["women", "men", "kids", "unisex"]


@pytest.fixture(scope="module")
def gateway(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[LocalProcess]:
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
        "GATEWAY_LOG_END_USER_HASH_SECRET": SECRET,
        "GATEWAY_MAX_BODY_BYTES": "300000",
    }
    process = start_gateway([worker_url], LOG_DIR, env=env)
    yield process
    process.stop()


@pytest.fixture
async def client(gateway: LocalProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def _photo(seed: int) -> str:
    return data_uri(png_bytes(48, 48, seed=seed))


def _messages(text: str, seed: int) -> list[Any]:
    messages: list[Any] = image_chat_body(text, _photo(seed))["messages"]
    return messages


def _schema(*order: str) -> dict[str, Any]:
    properties = {
        "material": {"type": "string", "enum": ["leather", "canvas"]},
        "price": {"type": "string", "enum": ["cheap", "dear"]},
    }
    return {
        "type": "object",
        "properties": {name: properties[name] for name in order},
        "required": list(order),
        "additionalProperties": False,
    }


def _json_schema(schema: dict[str, Any], name: str = "product") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


async def _post(url: str, body: dict[str, Any], request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(url + "/v1/chat/completions", json=body, headers=headers)


# --- structured outputs ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_parse_returns_a_valid_object(client: openai.AsyncOpenAI, seed: int) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL,
        messages=_messages("Material, style and audience of this bag?", seed),
        response_format=Product,
        temperature=0.8,
        seed=seed,
        max_completion_tokens=64,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Product)
    # Declared order is kept: the grammar emits the properties in the schema's order.
    assert list(json.loads(completion.choices[0].message.content or "")) == list(
        Product.model_fields
    )


async def test_streamed_structured_answer_validates(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL,
        messages=_messages("Describe it as JSON.", 4),
        response_format=Product,
        temperature=0.7,
        max_completion_tokens=64,
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Product)


async def test_property_order_is_part_of_the_key(gateway: LocalProcess) -> None:
    question = f"Which material? {uuid.uuid4().hex}"
    outcomes, contents = [], []
    for order in (("material", "price"), ("price", "material"), ("material", "price")):
        body = image_chat_body(
            question, _photo(5), temperature=0, max_tokens=32,
            response_format=_json_schema(_schema(*order)),
        )  # fmt: skip
        response = await _post(gateway.url, body)
        assert response.status_code == 200, response.text
        outcomes.append(response.headers["x-cache"])
        contents.append(json.loads(response.json()["choices"][0]["message"]["content"]))
    assert outcomes == ["miss", "miss", "hit"]
    assert list(contents[0]) == ["material", "price"]
    assert list(contents[1]) == ["price", "material"]
    assert contents[2] == contents[0]


async def test_a_structured_answer_that_does_not_parse_is_served_never_cached(
    gateway: LocalProcess,
) -> None:
    # json_object with 3 tokens cannot close its JSON (finish_reason "length"): the answer
    # is served as it is, and the next identical request asks the worker again.
    body = image_chat_body(
        f"JSON please {uuid.uuid4().hex}", _photo(17), temperature=0, max_tokens=3,
        response_format={"type": "json_object"},
    )  # fmt: skip
    first, second = [await _post(gateway.url, body) for _ in range(2)]
    assert first.status_code == second.status_code == 200
    content = first.json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "miss")


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


_RECURSIVE = {
    "type": "object",
    "properties": {"node": {"$ref": "#/$defs/node"}},
    "$defs": {
        "node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}},
    },
}
_LARGE = {
    "type": "object",
    "properties": {f"field_{i}": {"type": "string", "description": "x" * 80} for i in range(400)},
}


@pytest.mark.parametrize(
    ("schema", "words"),
    [(_deep(12), "levels deep"), (_RECURSIVE, "recursive"), (_LARGE, "larger than")],
    ids=["too-deep", "recursive", "too-large"],
)
async def test_schemas_over_the_bounds_never_reach_a_worker(
    gateway: LocalProcess, worker_url: str, schema: dict[str, Any], words: str
) -> None:
    before = await finished_requests(worker_url)
    body = image_chat_body("x", _photo(6), max_tokens=8, response_format=_json_schema(schema))
    response = await _post(gateway.url, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json_schema"
    assert error["param"] == "response_format.json_schema.schema"
    assert words in error["message"]
    assert await finished_requests(worker_url) == before


async def test_a_schema_the_backend_refuses_is_a_400_and_the_next_request_works(
    gateway: LocalProcess,
) -> None:
    # xgrammar refuses an unknown string "format" with "features not supported": the
    # worker's 400 comes back in our shape, and the worker goes on serving.
    schema = {"type": "object", "properties": {"s": {"type": "string", "format": "bogus"}}}
    body = image_chat_body("x", _photo(7), max_tokens=8, response_format=_json_schema(schema))
    response = await _post(gateway.url, body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) >= {"message", "type", "code"}
    ok = image_chat_body(
        "x", _photo(7), max_tokens=16, response_format=_json_schema(_schema("material"))
    )
    assert (await _post(gateway.url, ok)).status_code == 200


# --- bookkeeping fields ------------------------------------------------------------------------


async def test_bookkeeping_fields_share_one_answer_and_are_logged(
    client: openai.AsyncOpenAI, log_database_url: str
) -> None:
    question = f"Is this a good gift? {uuid.uuid4().hex}"
    ids = [f"bk-{uuid.uuid4().hex}" for _ in range(2)]
    answers = []
    for shopper, request_id in zip(("shopper-1", "shopper-2"), ids, strict=True):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=_messages(question, 8),
            temperature=0,
            max_tokens=8,
            user=shopper,
            metadata={"order": "A-17", "channel": "app"},
            store=False,
            service_tier="auto",
            prompt_cache_key="gifts",
            logprobs=False,
            response_format={"type": "text"},
            tool_choice="none",
            n=1,
            extra_headers={"X-Request-ID": request_id},
        )
        answers.append((raw.headers["x-cache"], raw.parse().choices[0].message.content))
    assert [cache for cache, _ in answers] == ["miss", "hit"]
    assert answers[0][1] == answers[1][1]
    rows = [(await asyncio.to_thread(logged_rows, log_database_url, i))[0] for i in ids]
    for row, shopper in zip(rows, ("shopper-1", "shopper-2"), strict=True):
        expected = hmac.new(SECRET.encode(), shopper.encode(), hashlib.sha256).hexdigest()
        assert row["end_user_sha256"] == expected
        assert json.loads(row["request_metadata"]) == {"order": "A-17", "channel": "app"}
        options = json.loads(row["request_options"])
        assert options["prompt_cache_key"] == "gifts"
        assert options["end_user_field"] == "user"
        assert shopper not in json.dumps(row, default=str)


async def test_structured_rows_carry_the_schema_name_and_digest(
    gateway: LocalProcess, log_database_url: str
) -> None:
    schema = _schema("material", "price")
    request_id = f"schema-{uuid.uuid4().hex}"
    body = image_chat_body(
        "x", _photo(9), max_tokens=32, temperature=0,
        response_format=_json_schema(schema, name="bag_facts"),
    )  # fmt: skip
    assert (await _post(gateway.url, body, request_id)).status_code == 200
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    compact = json.dumps(schema, separators=(",", ":"))
    assert row["response_format"] == "json_schema"
    assert row["schema_name"] == "bag_facts"
    assert row["schema_sha256"] == hashlib.sha256(compact.encode()).hexdigest()


# --- logprobs and n ---------------------------------------------------------------------------


async def test_logprobs_tokens_spell_the_content_and_bypass_the_cache(
    client: openai.AsyncOpenAI,
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("Colour?", 10), temperature=0, max_tokens=6,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    choice = raw.parse().choices[0]
    assert raw.headers["x-cache"] == "bypass"
    assert choice.logprobs is not None
    assert choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=MODEL, messages=_messages("Colour?", 10), logprobs=True, top_logprobs=21
        )
    assert refused.value.status_code == 400


async def test_n_choices_sampled_and_refused_greedy(
    client: openai.AsyncOpenAI, log_database_url: str
) -> None:
    request_id = f"n-{uuid.uuid4().hex}"
    completion = await client.chat.completions.create(
        model=MODEL, messages=_messages("Style?", 11), temperature=0.8, max_tokens=6, n=2,
        extra_headers={"X-Request-ID": request_id},
    )  # fmt: skip
    assert sorted(choice.index for choice in completion.choices) == [0, 1]
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert row["answer"].startswith("[0] ")
    assert "\n\n[1] " in row["answer"]
    assert json.loads(row["request_options"])["n"] == 2
    for n, temperature in ((2, 0.0), (5, 0.8)):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL, messages=_messages("Style?", 11), temperature=temperature, n=n
            )
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["param"] == "n"


async def test_n_choices_stream_each_by_index(
    client: openai.AsyncOpenAI, log_database_url: str
) -> None:
    request_id = f"n-stream-{uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model=MODEL, messages=_messages("Style?", 12), temperature=0.8, max_tokens=6, n=2,
        stream=True, extra_headers={"X-Request-ID": request_id},
    )  # fmt: skip
    texts: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1]
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert row["answer"] == f"[0] {texts[0]}\n\n[1] {texts[1]}"


async def test_seeded_choices_are_cached_whole_and_replayed_as_a_stream(
    gateway: LocalProcess,
) -> None:
    body = image_chat_body(
        f"Style? {uuid.uuid4().hex}", _photo(16), temperature=0.8, seed=5, n=2, max_tokens=6
    )
    first, second = [await _post(gateway.url, body) for _ in range(2)]
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")

    def choices(completion: dict[str, Any]) -> list[tuple[int, str, str]]:
        return [
            (c["index"], c["message"]["content"], c["finish_reason"]) for c in completion["choices"]
        ]

    assert choices(second.json()) == choices(first.json())
    assert [index for index, _, _ in choices(first.json())] == [0, 1]
    stream = await read_stream(gateway.url, {**body, "stream": True})
    assert stream.headers["x-cache"] == "hit"
    texts: dict[int, str] = {}
    for event in stream.events[:-1]:
        for choice in json.loads(event)["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    assert texts == {index: content for index, content, _ in choices(first.json())}


# --- tools ------------------------------------------------------------------------------------


_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "record_material",
        "description": "Record the bag's material.",
        "parameters": {
            "type": "object",
            "properties": {"material": {"type": "string", "enum": ["leather", "canvas"]}},
            "required": ["material"],
            "additionalProperties": False,
        },
    },
}
_NAMED: Any = {"type": "function", "function": {"name": "record_material"}}


async def test_named_tool_choice_returns_arguments_that_validate(
    client: openai.AsyncOpenAI, log_database_url: str
) -> None:
    request_id = f"tool-{uuid.uuid4().hex}"
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("What is it made of?", 13), temperature=0,
        max_tokens=64, tools=[_TOOL], tool_choice=_NAMED,
        extra_headers={"X-Request-ID": request_id},
    )  # fmt: skip
    assert raw.headers["x-cache"] == "bypass"
    (call,) = raw.parse().choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "record_material"
    arguments = json.loads(call.function.arguments)
    assert arguments["material"] in ("leather", "canvas")
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    logged = json.loads(row["tool_calls"])
    assert logged == [
        {"choice": 0, "name": "record_material", "arguments": call.function.arguments}
    ]


async def test_named_tool_choice_streamed(
    client: openai.AsyncOpenAI, log_database_url: str
) -> None:
    request_id = f"tool-stream-{uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model=MODEL, messages=_messages("What is it made of?", 14), temperature=0,
        max_tokens=64, tools=[_TOOL], tool_choice=_NAMED, stream=True,
        extra_headers={"X-Request-ID": request_id},
    )  # fmt: skip
    name, arguments = "", ""
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                if call.function is not None:
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
    assert name == "record_material"
    assert json.loads(arguments)["material"] in ("leather", "canvas")
    # The streamed deltas are recorded: the log row holds the assembled call.
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert json.loads(row["tool_calls"]) == [
        {"choice": 0, "name": "record_material", "arguments": arguments}
    ]


async def test_required_tool_choice_without_parallel_calls(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=_messages("What is it made of?", 18), temperature=0,
        max_tokens=64, tools=[_TOOL], tool_choice="required", parallel_tool_calls=False,
    )  # fmt: skip
    (call,) = completion.choices[0].message.tool_calls or []  # exactly one call
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "record_material"
    assert json.loads(call.function.arguments)["material"] in ("leather", "canvas")


async def test_a_tool_result_conversation_is_accepted(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [
        *_messages("What is it made of?", 15),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "record_material", "arguments": '{"material":"leather"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "recorded"},
    ]
    completion = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[_TOOL], max_tokens=4,
    )  # fmt: skip
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")


# --- image detail -----------------------------------------------------------------------------


def _gradient_jpeg(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


async def test_detail_low_costs_the_gateways_pixel_budget(gateway: LocalProcess) -> None:
    uri = data_uri(_gradient_jpeg(1024, 768), "image/jpeg")
    question = f"Which colour? {uuid.uuid4().hex}"
    tokens: dict[str, int] = {}
    caches = []
    for detail in ("high", "low", "low"):
        part = {"type": "image_url", "image_url": {"url": uri, "detail": detail}}
        content = [part, {"type": "text", "text": question}]
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 4}  # fmt: skip
        response = await _post(gateway.url, body)
        assert response.status_code == 200, response.text
        tokens[detail] = response.json()["usage"]["prompt_tokens"]
        caches.append(response.headers["x-cache"])
    assert caches == ["miss", "miss", "hit"]
    # 512 x 512 pixels by default: 1024 x 768 shrinks to 576 x 416 on the 32-pixel grid.
    assert low_detail_size(1024, 768, 512 * 512) == (576, 416)
    assert tokens["high"] - tokens["low"] == image_tokens(1024, 768) - image_tokens(576, 416)
