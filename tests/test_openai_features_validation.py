"""OpenAI API breadth without the engine (issue 17): schema bounds, what a worker receives
and what the cache key sees, the feature checks, a stream recorded choice by choice, and
answers that spell a forbidden term in JSON escapes (through a gateway in front of the
fake worker)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from gateway.answers import CachedAnswer, answer_from_completion
from gateway.cache.replay import completion_json, completion_sse
from gateway.errors import ErrorCode, GatewayError
from gateway.images import ImageLimits, check_image
from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation import ModerationSettings, Moderator
from gateway.moderation.escapes import decode_json_escapes
from gateway.moderation.policy import load_policy
from gateway.ratelimit.estimate import text_tokens
from gateway.streams import AnswerRecorder
from gateway.validation.detail import DetailBudgets, apply_detail, low_detail_size
from gateway.validation.encode import canonical_request
from gateway.validation.features import key_view, read_features, worker_payload
from gateway.validation.parse import parse_chat_body
from gateway.validation.schema_bounds import SchemaLimits, check_schema
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.images import data_uri
from tests.support.requests import chat_body
from tests.support.servers import gateway_settings, run_gateway
from tests.support.sse import read_stream
from worker.profiles import PROFILES, server_args, server_env

LIMITS = SchemaLimits()
IMAGE_LIMITS = ImageLimits(max_pixels=4096 * 4096, verify_decode=True)
SETTINGS = gateway_settings("http://127.0.0.1:9")
BUDGETS = DetailBudgets(low=512 * 512, high=2048 * 32 * 32)


def _refusal(schema: Any) -> str:
    with pytest.raises(GatewayError) as caught:
        check_schema(schema, "s", LIMITS)
    assert (caught.value.status, caught.value.code) == (400, ErrorCode.INVALID_JSON_SCHEMA)
    return caught.value.message


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (_nested(11), "levels deep"),
        ({"properties": {f"p{i}": {"type": "string"} for i in range(5001)}}, "larger than"),
        ({"enum": list(range(1001))}, "enum values"),
        ({"enum": ["x" * 300] * 51}, "characters of enum"),
        ({"anyOf": [{"type": "string"}] * 65}, "branches"),
        ({"type": "string", "pattern": "a" * 257}, "'pattern' longer"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "combines 'pattern'"),
        ({"$ref": "https://example.com/schema.json"}, "may only use '$ref'"),
        ({"$ref": "#"}, "may only use '$ref'"),
        ({"properties": {"a": _ref("missing")}}, "does not define"),
        ({"$defs": {"a": _ref("b"), "b": {"items": _ref("a")}}, **_ref("a")}, "recursive"),
        ({"properties": {"a": 3}}, "not an object or a boolean"),
        # Raw nesting a serializer could not take (Python's recursion limit): refused.
        (json.loads('{"a":' * 900 + "1" + "}" * 900), "levels deep"),
    ],
)
def test_schemas_over_the_bounds_are_refused(schema: Any, words: str) -> None:
    assert words in _refusal(schema)


def test_properties_count_over_every_level() -> None:
    limits = SchemaLimits(max_properties=3)
    schema: dict[str, Any] = {"properties": {"a": {"properties": {"b": {}, "c": {}}}, "d": {}}}
    with pytest.raises(GatewayError, match="more than 3 properties"):
        check_schema(schema, "s", limits)


def test_malformed_keywords_are_left_to_the_grammar_backend() -> None:
    # Its 400 comes back to the client (test_openai_features_engine); never a 500 here.
    for schema in ({"properties": 5}, {"anyOf": 3}, {"$defs": 3}, {"enum": "x"}):
        assert check_schema(schema, "s", LIMITS)


def test_a_shared_definition_is_not_recursion() -> None:
    defs = {"money": {"type": "number"}, "price": {"properties": {"amount": _ref("money")}}}
    schema = {"$defs": defs, "properties": {"a": _ref("price"), "b": _ref("money")}}
    assert json.loads(check_schema(schema, "s", LIMITS)) == schema
    assert check_schema(_nested(10), "s", LIMITS)


def _schema_body(*order: str, **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in order}}
    fmt = {"type": "json_schema", "json_schema": {"name": "facts", "schema": schema}}
    return chat_body("Which material?", response_format=fmt, **extra)


def _key(body: dict[str, Any]) -> bytes:
    request = parse_chat_body(body)
    assert not isinstance(request, dict)
    return canonical_request(worker_payload(request), [])  # type: ignore[arg-type]


def test_bookkeeping_and_explicit_defaults_leave_the_worker_body_and_the_key() -> None:
    plain = chat_body("Is it leather?", temperature=0)
    dressed = chat_body(
        "Is it leather?", temperature=0, user="shopper-7", safety_identifier="h-1",
        prompt_cache_key="gifts", metadata={"order": "A-17"}, store=True, service_tier="flex",
        logprobs=False, top_logprobs=0, n=1, response_format={"type": "text"},
        tool_choice="none", parallel_tool_calls=True,
    )  # fmt: skip
    request = parse_chat_body(dressed)
    assert worker_payload(request) == worker_payload(parse_chat_body(plain))  # type: ignore[arg-type]
    assert _key(dressed) == _key(plain)


def test_the_key_keeps_a_schemas_property_order_and_the_worker_gets_it() -> None:
    assert _key(_schema_body("material", "price")) != _key(_schema_body("price", "material"))
    assert _key(_schema_body("material", "price")) == _key(_schema_body("material", "price"))
    request = parse_chat_body(_schema_body("price", "material"))
    payload = worker_payload(request)  # type: ignore[arg-type]
    assert list(payload["response_format"]["json_schema"]["schema"]["properties"]) == [
        "price",
        "material",
    ]
    assert isinstance(key_view(payload)["response_format"]["json_schema"]["schema"], str)


_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 5, "temperature": 0.7}, "n"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice.function.name"),
        ({"tools": [_TOOL, _TOOL]}, "tools[1].function.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema"),
    ],
)  # fmt: skip
def test_feature_checks(extra: dict[str, Any], param: str) -> None:
    request = parse_chat_body(chat_body("x", **extra))
    with pytest.raises(GatewayError) as caught:
        read_features(request, SETTINGS)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "42"}, "messages[1].tool_call_id"),
        ({"role": "user", "content": "x", "tool_call_id": "c1"}, "messages[1].tool_call_id"),
        ({"role": "assistant", "content": None}, "messages[1].content"),
        ({"role": "user", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         "messages[1].tool_calls"),
    ],
)  # fmt: skip
def test_tool_messages_sit_where_openai_puts_them(message: dict[str, Any], param: str) -> None:
    body = chat_body("x")
    body["messages"].append(message)
    with pytest.raises(GatewayError) as caught:
        read_features(parse_chat_body(body), SETTINGS)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_features_for_the_log_and_the_cache() -> None:
    request = parse_chat_body(
        _schema_body("a", logprobs=True, top_logprobs=3, metadata={"k": "v"}, user="u")
    )
    features = read_features(request, SETTINGS)  # type: ignore[arg-type]
    assert (features.response_format, features.schema_name) == ("json_schema", "facts")
    assert features.cache_bypass == "logprobs"
    assert features.metadata == {"k": "v"}
    assert features.options == {"logprobs": True, "top_logprobs": 3, "end_user_field": "user"}
    assert features.end_user_sha256 is None  # no secret set: the id is not logged at all
    assert '"a"' in features.extra_text  # the schema counts in the token estimate


def test_the_recorder_keeps_each_choice_and_tool_call() -> None:
    recorder = AnswerRecorder()
    events = [
        {"choices": [{"index": 1, "delta": {"content": "wo"}}]},
        {"choices": [{"index": 0, "delta": {"content": "one"}}]},
        {"choices": [{"index": 1, "delta": {"content": "rld"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "lookup", "arguments": '{"q"'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ':"bag"}'}}]}, "finish_reason": "stop"}]},
    ]  # fmt: skip
    for event in events:
        recorder.observe(json.dumps(event).encode())
    summary = recorder.summary()
    assert summary.texts == {0: "one", 1: "world"}
    assert summary.text == "[0] one\n\n[1] world"
    assert summary.logged_tool_calls() == [
        {"choice": 0, "name": "lookup", "arguments": '{"q":"bag"}'}
    ]
    assert recorder.parts == ["one"]


def test_json_escapes_are_decoded_for_the_policy() -> None:
    assert decode_json_escapes(r'{"a":"\u8272\u60c5 \ud83d\ude00\n"}') == '{"a":"色情 😀\n"}'
    assert decode_json_escapes("plain") == "plain"


# --- through a gateway: answers that hide a term in escapes ----------------------------------

ESCAPED = r'{"note":"\u8272\u60c5\u7247"}'  # "色情片", spelled in JSON escapes


@pytest.fixture(scope="module")
async def gateway(fake_worker: FakeWorker) -> AsyncIterator[str]:
    async with run_gateway(fake_worker.url) as url:
        yield url


@pytest.mark.parametrize("stream", [False, True])
async def test_a_term_in_json_escapes_is_refused(
    gateway: str, fake_worker: FakeWorker, stream: bool
) -> None:
    prompt = f"escaped {uuid.uuid4().hex}"
    fake_worker.scripts[prompt] = f"fake:say:{ESCAPED}"
    body = chat_body(prompt, stream=stream, response_format={"type": "json_object"})
    if stream:
        events = (await read_stream(gateway, body)).events
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "content_policy_violation"
        sent = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2])
        assert ESCAPED.startswith(sent)
        assert sent != ESCAPED, "the chunk that completes the escaped term is never sent"
        return
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(gateway + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return out.getvalue()


def test_a_gif_reaches_the_worker_as_its_first_frame_in_png() -> None:
    gif = _animated_gif()
    checked = check_image(data_uri(gif, "image/gif"), IMAGE_LIMITS)
    assert checked.info.format == "gif"
    flat = apply_detail(checked, None, BUDGETS, IMAGE_LIMITS, "image")
    assert flat.data_uri.startswith("data:image/png;base64,")
    assert (flat.info.format, flat.info.width, flat.info.height) == ("png", 40, 30)
    png = base64.b64decode(flat.data_uri.split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as image:
        red, _, blue = image.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
    assert red > 200 > blue  # the first frame, not the second
    assert flat.info.sha256 != checked.info.sha256  # the digest is of what the model sees


def test_detail_low_keeps_the_aspect_on_the_token_grid() -> None:
    big = check_image(data_uri(_jpeg(1600, 1200), "image/jpeg"), IMAGE_LIMITS)
    low = apply_detail(big, "low", BUDGETS, IMAGE_LIMITS, "image")
    assert (low.info.width, low.info.height) == low_detail_size(1600, 1200, 512 * 512)
    assert low.info.width % 32 == low.info.height % 32 == 0
    assert low.info.pixels <= 512 * 512
    assert apply_detail(big, "high", BUDGETS, IMAGE_LIMITS, "image") is big
    small = check_image(data_uri(_jpeg(320, 240), "image/jpeg"), IMAGE_LIMITS)
    assert apply_detail(small, "low", BUDGETS, IMAGE_LIMITS, "image") is small


def test_detail_low_refuses_a_corrupt_image_with_our_400() -> None:
    """Shrinking is the image's first decode: a truncated JPEG over the budget was an
    OSError there, a 500 and a stack trace on every such request."""
    photo = _jpeg(1024, 768)
    header_only = ImageLimits(max_pixels=IMAGE_LIMITS.max_pixels, verify_decode=False)
    broken = check_image(data_uri(photo[: len(photo) // 2], "image/jpeg"), header_only)
    with pytest.raises(GatewayError) as refused:
        apply_detail(broken, "low", BUDGETS, IMAGE_LIMITS, "messages[0].content[0]")
    assert (refused.value.code, refused.value.param) == (
        ErrorCode.INVALID_IMAGE,
        "messages[0].content[0]",
    )


def _jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).save(out, "JPEG")
    return out.getvalue()


# --- what a key is charged, and tool-call arguments under the content policy ----------------


async def test_tokens_per_minute_charge_every_choice_and_the_schema(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    schema_body = _schema_body("material", "price", max_tokens=16)
    schema_text = json.dumps(
        schema_body["response_format"]["json_schema"]["schema"], separators=(",", ":")
    )
    bodies = {
        "one": chat_body("hello", max_tokens=16, temperature=0.7),
        "three": chat_body("hello", max_tokens=16, temperature=0.7, n=3),
        "plain": chat_body("Which material?", max_tokens=16),
        "schema": schema_body,
    }
    # A fresh key per request: its sliding window then holds that one charge exactly,
    # wherever the minute's boundary falls.
    keys = {name: create_key(log_database_url, "--tpm", "100000") for name in bodies}
    cost: dict[str, int] = {}
    async with (
        keyed_gateway(fake_worker.url, log_database_url) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        for name, body in bodies.items():
            response = await client.post(
                url + "/v1/chat/completions", json=body, headers=bearer(keys[name])
            )
            assert response.status_code == 200, response.text
            cost[name] = 100_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    # Differences only, so the test holds whatever fixed costs a request has besides.
    assert cost["three"] - cost["one"] == 2 * 16  # max_tokens is charged once per choice
    # The schema is read by the model too: it counts as text.
    assert cost["schema"] - cost["plain"] == text_tokens(
        "Which material?\n" + schema_text
    ) - text_tokens("Which material?")


def test_tool_call_arguments_are_moderated_in_a_stream() -> None:
    moderator = Moderator(ModerationSettings(), load_policy(), Metrics(CollectorRegistry()))
    draft = InteractionDraft()
    guard = moderator.stream_guard(draft)
    recorder = AnswerRecorder()
    for piece in ('{"note": "', r"\u8272"):  # the term is not complete yet
        _observe_arguments(recorder, piece)
        guard(recorder)
    _observe_arguments(recorder, r"\u60c5")
    with pytest.raises(GatewayError) as caught:
        guard(recorder)
    assert caught.value.code == ErrorCode.CONTENT_POLICY_VIOLATION
    assert draft.moderation == "blocked:answer:sexual"


def _observe_arguments(recorder: AnswerRecorder, piece: str) -> None:
    call = {"index": 0, "function": {"name": "note", "arguments": piece}}
    event = {"choices": [{"index": 1, "delta": {"tool_calls": [call]}}]}
    recorder.observe(json.dumps(event).encode())


# --- n > 1 in the cache: every choice stored and replayed -----------------------------------


def test_an_answer_with_several_choices_round_trips_and_replays() -> None:
    answer = CachedAnswer("cotton", "stop", 30, 9, (("真皮", "length"), ("", "stop")))
    assert CachedAnswer.decode(answer.encode()) == answer
    one = CachedAnswer("cotton", "stop", 30, 3)
    assert CachedAnswer.decode(one.encode()) == one  # the one-choice format is unchanged
    assert json.loads(one.encode()) == ["cotton", "stop", 30, 3]
    assert CachedAnswer.decode(b'["a","stop",1,1,[["b"]]]') is None
    body = json.loads(completion_json(answer, "m"))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "cotton", "stop"),
        (1, "真皮", "length"),
        (2, "", "stop"),
    ]
    recorder = AnswerRecorder()
    for event in completion_sse(answer, "m", include_usage=True):
        recorder.observe(event.removeprefix(b"data: ").strip())
    assert recorder.answer() == answer  # a replayed stream records as the stored answer
    assert answer.text == "[0] cotton\n\n[1] 真皮\n\n[2] "


def test_only_whole_text_answers_are_stored() -> None:
    def body(*choices: dict[str, Any]) -> bytes:
        usage = {"prompt_tokens": 3, "completion_tokens": 4}
        return json.dumps({"choices": list(choices), "usage": usage}).encode()

    def choice(index: int, **extra: Any) -> dict[str, Any]:
        message = {"role": "assistant", "content": f"c{index}", **extra.pop("message", {})}
        return {"index": index, "message": message, "finish_reason": "stop", **extra}

    two = answer_from_completion(body(choice(1), choice(0)))
    assert two is not None
    assert two.choices == [("c0", "stop"), ("c1", "stop")]
    assert answer_from_completion(body(choice(0), choice(2))) is None  # a choice missing
    assert answer_from_completion(body(choice(0, logprobs={"content": []}))) is None
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert answer_from_completion(body(choice(0, message={"tool_calls": [call]}))) is None
    assert answer_from_completion(body(choice(0, finish_reason="tool_calls"))) is None


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_worker_profile_pins_the_grammar_backend_and_the_tool_parser(name: str) -> None:
    profile = PROFILES[name]
    args = server_args(profile, "127.0.0.1", 8100)
    config = json.loads(args[args.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in args
    # Named and required tool choices decode the tool's parameters as a JSON schema.
    assert server_env(profile, None)["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "0"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"safety_identifier": "s" * 65}, "safety_identifier"),
        ({"prompt_cache_key": "p" * 65}, "prompt_cache_key"),
        ({"user": "u" * 257}, "user"),
        ({"service_tier": "bogus"}, "service_tier"),
        ({"store": "yes"}, "store"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
         "response_format.json_schema.name"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
         "tools[0].function.name"),
        ({"chat_template_kwargs": {}}, "chat_template_kwargs"),
        ({"media_io_kwargs": {}}, "media_io_kwargs"),
    ],
)  # fmt: skip
def test_openai_bounds_on_the_new_fields(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_chat_body(chat_body("x", **extra))
    assert (caught.value.status, caught.value.param) == (400, param)
