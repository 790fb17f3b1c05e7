"""gateway.protocol, gateway.validation.prepare and gateway.errors, without any server."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from gateway.errors import ERROR_TABLE, ErrorCode, GatewayError
from gateway.protocol import ChatCompletionRequest, ErrorResponse, VQARequest
from gateway.validation import prepare
from gateway.validation.encode import LAZY_BODY_MAX_BYTES, worker_body
from gateway.validation.parse import (
    check_content_type,
    parse_chat_body,
    parse_json_object,
    parse_vqa_body,
)
from gateway.validation.prepare import prepare_chat, prepare_vqa
from tests.support.bad_requests import MARKER
from tests.support.images import b64, data_uri, image_bytes
from tests.support.requests import MODEL, chat_body, image_chat_body
from tests.support.servers import gateway_settings
from tests.support.threads import off_the_loop, record_threads

SETTINGS = gateway_settings("http://127.0.0.1:1")
KNOWN = frozenset({MODEL})


def _error(call: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    return caught.value


async def _prepare_error(body: dict[str, Any], known: frozenset[str] = KNOWN) -> GatewayError:
    parsed = parse_chat_body(body)
    assert isinstance(parsed, ChatCompletionRequest)
    with pytest.raises(GatewayError) as caught:
        await prepare_chat(parsed, SETTINGS, known)
    return caught.value


# --- errors --------------------------------------------------------------------------------


def test_every_code_has_a_table_entry() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)


def test_error_body_and_sse_event_share_one_shape() -> None:
    error = GatewayError(ErrorCode.INVALID_TOP_P, "'top_p' must be at most 1.", param="top_p")
    body = ErrorResponse.model_validate_json(error.body())
    assert body.error.model_dump() == {
        "message": "'top_p' must be at most 1.",
        "type": "invalid_request_error",
        "param": "top_p",
        "code": "invalid_top_p",
    }
    event = error.sse_event()
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert json.loads(event[6:]) == json.loads(error.body())


def test_upstream_rejection_keeps_the_workers_status() -> None:
    error = GatewayError(ErrorCode.UPSTREAM_REJECTED, "no", upstream_status=422)
    assert error.status == 422
    assert GatewayError(ErrorCode.UPSTREAM_ERROR, "x", upstream_status=422).status == 502


# --- body parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    "value", [None, "", "text/plain", "application/jsonx", "multipart/form-data"]
)
def test_other_content_types(value: str | None) -> None:
    error = _error(check_content_type, value)
    assert (error.status, error.code) == (415, ErrorCode.UNSUPPORTED_MEDIA_TYPE)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"s"', b"\xff", b"[" * 100_000])
async def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        await parse_json_object(raw)
    assert caught.value.code is ErrorCode.INVALID_JSON


def test_shape_detection() -> None:
    assert isinstance(parse_chat_body(chat_body()), ChatCompletionRequest)
    assert isinstance(parse_chat_body({"image": "x", "prompt": "y"}), VQARequest)
    assert _error(parse_chat_body, {"model": MODEL}).code is ErrorCode.MISSING_MESSAGES


def test_content_may_be_a_string_or_parts() -> None:
    uri = data_uri(image_bytes())
    request = parse_chat_body(image_chat_body("what?", uri))
    assert isinstance(request, ChatCompletionRequest)
    assert request.messages[0].content is not None  # None only for tool-call messages
    assert len(request.messages[0].content) == 2


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"max_tokens": 0}, ErrorCode.INVALID_MAX_TOKENS, "max_tokens"),
        ({"max_tokens": True}, ErrorCode.INVALID_MAX_TOKENS, "max_tokens"),
        ({"max_completion_tokens": -1}, ErrorCode.INVALID_MAX_TOKENS, "max_completion_tokens"),
        ({"temperature": float("nan")}, ErrorCode.INVALID_TEMPERATURE, "temperature"),
        ({"temperature": float("inf")}, ErrorCode.INVALID_TEMPERATURE, "temperature"),
        ({"temperature": "0.5"}, ErrorCode.INVALID_TEMPERATURE, "temperature"),
        ({"temperature": 2.01}, ErrorCode.INVALID_TEMPERATURE, "temperature"),
        ({"top_p": float("-inf")}, ErrorCode.INVALID_TOP_P, "top_p"),
        ({"top_p": 0}, ErrorCode.INVALID_TOP_P, "top_p"),
        ({"top_p": 1.0001}, ErrorCode.INVALID_TOP_P, "top_p"),
        ({"n": 0}, ErrorCode.INVALID_REQUEST, "n"),
        ({"n": 129}, ErrorCode.INVALID_REQUEST, "n"),
        ({"top_logprobs": 21}, ErrorCode.INVALID_REQUEST, "top_logprobs"),
        ({"seed": 2**64}, ErrorCode.INVALID_REQUEST, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, ErrorCode.INVALID_REQUEST, "stop"),
        ({"chat_template": "x"}, ErrorCode.UNSUPPORTED_PARAMETER, "chat_template"),
        ({"mm_processor_kwargs": {}}, ErrorCode.UNSUPPORTED_PARAMETER, "mm_processor_kwargs"),
        ({"stream": "yes"}, ErrorCode.INVALID_REQUEST, "stream"),
    ],
)
def test_sampling_fields(extra: dict[str, Any], code: ErrorCode, param: str) -> None:
    error = _error(parse_chat_body, chat_body(**extra))
    assert (error.status, error.code, error.param) == (400, code, param)


def test_accepts_valid_sampling_fields() -> None:
    request = parse_chat_body(
        chat_body(
            max_tokens=5,
            temperature=0,
            top_p=1,
            seed=-1,
            stop=["\n"],
            n=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert isinstance(request, ChatCompletionRequest)
    assert request.temperature == 0.0


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (
            chat_body([{"type": "image_url", "image_url": {}}]),
            "messages[0].content[0].image_url.url",
            "is required",
        ),
        (chat_body([{"type": "video", "x": MARKER}]), "messages[0].content[0]", "unknown 'type'"),
        (chat_body([{"text": MARKER}]), "messages[0].content[0]", "'type' field"),
        (chat_body(5), "messages[0].content", "a string or a list of"),
        (
            {"model": MODEL, "messages": [{"role": MARKER, "content": "x"}]},
            "messages[0].role",
            "must be",
        ),
        ({"model": MODEL, "messages": "hi"}, "messages", "must be an array"),
    ],
)
def test_messages_name_the_failing_place_without_echoing_it(
    body: dict[str, Any], param: str, fragment: str
) -> None:
    error = _error(parse_chat_body, body)
    assert error.param == param
    assert fragment in error.message
    assert MARKER not in error.message


def test_vqa_fields() -> None:
    assert parse_vqa_body({"image": "x", "prompt": "y"}).max_tokens is None
    assert _error(parse_vqa_body, {"image": "x"}).code is ErrorCode.MISSING_PROMPT
    assert _error(parse_vqa_body, {"prompt": "x"}).code is ErrorCode.MISSING_IMAGE
    assert _error(parse_vqa_body, {"image": "x", "prompt": "y", "stream": True}).code is (
        ErrorCode.UNSUPPORTED_PARAMETER
    )


# --- prepared requests ---------------------------------------------------------------------


async def test_prepared_chat_body_is_what_was_validated() -> None:
    png = image_bytes("PNG")
    body = image_chat_body("what?", data_uri(png, "image/jpeg"), temperature=0.5)
    parsed = parse_chat_body(body)
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, KNOWN)
    forwarded = json.loads(prepared.body)
    assert forwarded["max_tokens"] == SETTINGS.default_max_tokens  # a bound is always sent
    assert forwarded["temperature"] == 0.5
    assert forwarded["stream"] is False
    part = forwarded["messages"][0]["content"][0]
    assert part["image_url"]["url"] == data_uri(png, "image/png")  # MIME from the bytes
    assert prepared.images[0].format == "png"
    assert prepared.prompt_chars == len("what?")


async def test_vllm_length_extensions_are_forwarded_within_the_token_limit() -> None:
    parsed = parse_chat_body(chat_body(max_tokens=16, min_tokens=16, ignore_eos=True))
    assert isinstance(parsed, ChatCompletionRequest)
    forwarded = json.loads((await prepare_chat(parsed, SETTINGS, KNOWN)).body)
    assert (forwarded["min_tokens"], forwarded["ignore_eos"]) == (16, True)
    too_long = parse_chat_body(chat_body(max_tokens=16, min_tokens=17))
    assert isinstance(too_long, ChatCompletionRequest)
    with pytest.raises(GatewayError) as caught:
        await prepare_chat(too_long, SETTINGS, KNOWN)
    assert (caught.value.status, caught.value.param) == (400, "min_tokens")


async def test_prepared_vqa_is_a_chat_request_with_image_first() -> None:
    png = image_bytes("PNG")
    parsed = parse_vqa_body({"image": b64(png), "prompt": "colour?", "max_tokens": 7})
    prepared = await prepare_vqa(parsed, SETTINGS, KNOWN)
    forwarded = json.loads(prepared.body)
    assert forwarded["model"] == MODEL
    assert forwarded["max_tokens"] == 7
    content = forwarded["messages"][0]["content"]
    assert content[0]["image_url"]["url"] == data_uri(png)
    assert content[0]["uuid"] == prepared.images[0].sha256
    assert content[1] == {"type": "text", "text": "colour?"}


async def test_each_image_carries_its_digest_as_the_workers_multimodal_uuid() -> None:
    first, second = image_bytes("PNG", (20, 20)), image_bytes("JPEG", (30, 10))
    message = [
        {"type": "image_url", "image_url": {"url": data_uri(first)}},
        {"type": "text", "text": "same brand?"},
        {"type": "image_url", "image_url": {"url": data_uri(second, "image/jpeg")}},
    ]
    parsed = parse_chat_body(chat_body(message))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, KNOWN)
    parts = json.loads(prepared.body)["messages"][0]["content"]
    assert [p.get("uuid") for p in parts] == [
        prepared.images[0].sha256,
        None,
        prepared.images[1].sha256,
    ]
    # The cache key is the same with or without uuids: it already holds the digests.
    off = gateway_settings("http://127.0.0.1:1", worker_image_uuids=False)
    parsed = parse_chat_body(chat_body(message))
    assert isinstance(parsed, ChatCompletionRequest)
    plain = await prepare_chat(parsed, off, KNOWN)
    assert all("uuid" not in p for p in json.loads(plain.body)["messages"][0]["content"])
    assert plain.canonical == prepared.canonical


async def test_a_client_cannot_choose_an_images_uuid() -> None:
    part = {"type": "image_url", "image_url": {"url": data_uri(image_bytes("PNG"))}}
    body = chat_body([{**part, "uuid": "someone-elses-image"}])
    with pytest.raises(GatewayError) as caught:
        parse_chat_body(body)
    assert caught.value.status == 400


async def test_large_requests_are_prepared_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each image's checks (base64 decoding, hashing, the header) record the thread they ran in.
    checked_in = record_threads(monkeypatch, prepare, "_check_one")
    large = data_uri(image_bytes("PNG", (900, 900), compress_level=0))
    assert len(large) > 32 * 1024
    small = data_uri(image_bytes("PNG", (10, 10)))
    parsed = parse_chat_body(image_chat_body("x", small, large))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, KNOWN)
    assert [i.width for i in prepared.images] == [10, 900]
    assert len(checked_in) == 2
    assert off_the_loop(checked_in), checked_in
    # A refusal raised in the thread reaches the caller as the same 400.
    checked_in.clear()
    broken = parse_chat_body(image_chat_body("x", large, "data:image/png;base64,!!"))
    assert isinstance(broken, ChatCompletionRequest)
    with pytest.raises(GatewayError) as caught:
        await prepare_chat(broken, SETTINGS, KNOWN)
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert off_the_loop(checked_in), checked_in
    # Control: a small request is checked on the loop, where a thread hop costs more.
    checked_in.clear()
    parsed = parse_chat_body(image_chat_body("x", small))
    assert isinstance(parsed, ChatCompletionRequest)
    await prepare_chat(parsed, SETTINGS, KNOWN)
    assert checked_in == [threading.main_thread().name]


async def test_the_workers_body_is_encoded_when_first_used_unless_it_is_large() -> None:
    # A cache hit never forwards the body: a small one is encoded only when a miss
    # forwards it; a large one while preparing (in a thread), never on the event loop.
    small = parse_chat_body(image_chat_body("what?", data_uri(image_bytes("PNG"))))
    assert isinstance(small, ChatCompletionRequest)
    prepared = await prepare_chat(small, SETTINGS, KNOWN)
    assert not prepared.worker_json.is_encoded
    body = prepared.body
    assert prepared.worker_json.is_encoded
    assert prepared.body is body  # encoded once
    parts = json.loads(body)["messages"][0]["content"]
    assert parts[0]["uuid"] == prepared.images[0].sha256
    assert parts[1] == {"type": "text", "text": "what?"}
    large = data_uri(image_bytes("PNG", (900, 900), compress_level=0))
    assert len(large) > LAZY_BODY_MAX_BYTES
    parsed = parse_chat_body(image_chat_body("what?", large))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, KNOWN)
    assert prepared.worker_json.is_encoded
    assert json.loads(prepared.body)["messages"][0]["content"][0]["image_url"]["url"] == large


async def test_a_structured_requests_image_uuid_is_salted_by_its_schema() -> None:
    # The worker caches the processed image by uuid; a schema or tools change the prompt
    # around it, so such requests get their own uuid (digest.salt).
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    message = [
        {"type": "image_url", "image_url": {"url": data_uri(image_bytes("PNG"))}},
        {"type": "text", "text": "what?"},
    ]
    parsed = parse_chat_body(chat_body(message, response_format=fmt))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, KNOWN)
    salt = prepared.features.uuid_salt
    assert salt
    part = json.loads(prepared.body)["messages"][0]["content"][0]
    assert part["uuid"] == f"{prepared.images[0].sha256}.{salt}"


LONE_SURROGATE = "lone \ud800 surrogate"


@pytest.mark.parametrize(
    "body",
    [
        chat_body(LONE_SURROGATE),
        image_chat_body(LONE_SURROGATE, data_uri(image_bytes("PNG"))),
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": LONE_SURROGATE},
                {"role": "user", "content": "hi"},
            ],
        },
    ],
)
async def test_a_lone_surrogate_is_refused_while_preparing_before_any_lookup(
    body: dict[str, Any],
) -> None:
    # The canonical key refuses it (the body, encoded later or never, would too): the same
    # 400 for a request whose answer is cached and for one that goes to a worker.
    error = await _prepare_error(body)
    assert (error.status, error.code) == (400, ErrorCode.INVALID_REQUEST)
    assert error.message == "The request contains invalid Unicode text."
    with pytest.raises(GatewayError) as caught:
        worker_body(body, None)
    assert caught.value.message == error.message


async def test_limits_from_settings() -> None:
    uri = data_uri(image_bytes())
    cases = [
        (chat_body(max_tokens=SETTINGS.max_tokens_cap + 1), ErrorCode.INVALID_MAX_TOKENS),
        (chat_body("x" * (SETTINGS.max_prompt_chars + 1)), ErrorCode.PROMPT_TOO_LONG),
        (image_chat_body("x", uri, uri, uri), ErrorCode.TOO_MANY_IMAGES),
        (chat_body(stream_options={"include_usage": True}), ErrorCode.INVALID_REQUEST),
        (chat_body(model="other"), ErrorCode.MODEL_NOT_FOUND),
    ]
    for body, code in cases:
        assert (await _prepare_error(body)).code is code


async def test_prompt_limit_counts_every_message() -> None:
    half = "x" * (SETTINGS.max_prompt_chars // 2 + 1)
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": half},
            {"role": "user", "content": [{"type": "text", "text": half}]},
        ],
    }
    assert (await _prepare_error(body)).code is ErrorCode.PROMPT_TOO_LONG


async def test_no_known_models_means_no_worker() -> None:
    error = await _prepare_error(chat_body(), known=frozenset())
    assert (error.status, error.code) == (503, ErrorCode.NO_HEALTHY_WORKER)
