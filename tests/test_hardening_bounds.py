"""Issue 15, section 1: one request cannot stall a replica.

Message and part counts are bounded before the typed validation, every message costs an
overhead in the prompt and token limits, and the work that grows with a body runs in a
thread, chosen by the work it does: base64 decoded, pixels decoded or re-encoded.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ChatCompletionRequest
from gateway.ratelimit import estimate_tokens
from gateway.validation import bounds, parse, prepare
from gateway.validation.bounds import heavy_work
from gateway.validation.offload import BodyParser
from gateway.validation.parse import parse_chat_request
from gateway.validation.prepare import prepare_chat
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import data_uri, image_bytes
from tests.support.requests import MODEL, chat_body, image_chat_body
from tests.support.servers import gateway_settings, run_gateway
from tests.support.threads import off_the_loop, record_threads

CHAT = "/v1/chat/completions"
# A body over this size holds at least one photo's worth of base64 (the photo tests below).
PROCESS_BODY_BYTES = 1024 * 1024
# The production limits (tests/support/servers.py lowers the body and prompt limits).
PRODUCTION = {"max_body_bytes": 16 * 1024 * 1024, "max_prompt_chars": 16_000}
SETTINGS = gateway_settings("http://127.0.0.1:1", **PRODUCTION)


def _empty_messages(count: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": ""}] * count}


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def palette_png(side: int = 4096) -> bytes:
    """A few KB of PNG that decodes to side x side pixels."""
    out = io.BytesIO()
    Image.new("P", (side, side), 0).save(out, "PNG", optimize=True)
    return out.getvalue()


async def test_a_flood_of_empty_messages_is_refused_before_any_worker(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    async with run_gateway(fake_worker.url, **PRODUCTION) as url:
        before = len(fake_worker.requests)
        for count, code, param in (
            (300_000, "invalid_request", "messages"),  # over max_messages
            (2_000, "prompt_too_long", "messages"),  # under it: the overhead counts
        ):
            response = await http.post(url + CHAT, json=_empty_messages(count))
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"]) == (code, param)
        parts = [{"type": "text", "text": ""}] * 1000
        response = await http.post(url + CHAT, json=chat_body(parts))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages[0].content"
        assert len(fake_worker.requests) == before
        ok = await http.post(url + CHAT, json=_empty_messages(10))
        assert ok.status_code == 200, ok.text


def test_the_bounds_are_settings() -> None:
    settings = gateway_settings("http://127.0.0.1:1", max_messages=3, max_content_parts=2)
    with pytest.raises(Exception, match="4 messages; the limit is 3"):
        bounds.check_counts(_empty_messages(4), settings)
    with pytest.raises(Exception, match="3 content parts; the limit is 2"):
        bounds.check_counts(chat_body([{"type": "text", "text": "a"}] * 3), settings)
    bounds.check_counts(_empty_messages(3), settings)


def test_every_message_costs_tokens_in_the_estimate() -> None:
    assert estimate_tokens("", [], 1, messages=1000) - estimate_tokens("", [], 1) >= 999 * 5


async def test_the_charged_estimate_counts_the_messages() -> None:
    parsed = await parse_chat_request(json.dumps(_empty_messages(500)).encode(), SETTINGS)
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, frozenset({MODEL}))
    assert prepared.messages == 500


# --- the thread is chosen by the work, not by the base64 length -------------------------------


def palette_gif(side: int = 2048) -> bytes:
    """A few KB of GIF whose first frame is re-encoded as side x side pixels of PNG."""
    out = io.BytesIO()
    Image.new("P", (side, side), 0).save(out, "GIF")
    return out.getvalue()


def test_preparing_is_heavy_work_when_it_re_encodes_pixels() -> None:
    # Preparing decodes pixels only to re-encode them: a GIF's first frame, detail "low".
    small_gif = data_uri(palette_gif(), "image/gif")
    assert len(small_gif) < 32 * 1024
    assert heavy_work(references=[small_gif])
    photo = data_uri(image_bytes("JPEG", (1024, 768)), "image/jpeg")
    assert not heavy_work(references=[photo])
    assert heavy_work(references=[photo], low_detail=[True], low_detail_pixels=512 * 512)
    # Within the budget, a "low" image is sent as it is: nothing to re-encode.
    assert not heavy_work(references=[photo], low_detail=[True], low_detail_pixels=1024 * 768)
    # A PNG of many pixels is only base64-decoded and hashed while the request is prepared.
    assert not heavy_work(references=[data_uri(palette_png())])
    assert not heavy_work(messages=1, text_chars=100)
    assert heavy_work(messages=1000)


def test_a_photo_of_typical_size_is_prepared_on_the_loop() -> None:
    # 300 KB of JPEG (400 KB of base64): a thread hop would cost more than the work.
    typical = data_uri(b"\xff\xd8\xff" + os.urandom(300 * 1024), "image/jpeg")
    assert not heavy_work(references=[typical])
    assert heavy_work(references=[data_uri(os.urandom(400 * 1024), "image/jpeg")])


def test_the_decode_checks_cost_follows_the_format() -> None:
    # A draft-mode JPEG costs by its compressed bytes, PNG's unfiltering by its pixels.
    listing = bounds.decode_ns("jpeg", 640 * 480, 53 * 1024)
    assert listing < bounds.THREAD_DECODE_NS < bounds.decode_ns("jpeg", 960 * 1280, 190 * 1024)
    palette = bounds.decode_ns("png", 4096 * 4096, len(palette_png()))
    assert palette > bounds.THREAD_DECODE_NS
    assert bounds.decode_ns("png", 640 * 480, 53 * 1024) > listing


async def _prepare(reference: str, settings: Any, detail: str | None = None) -> Any:
    body = image_chat_body("what is it?", reference)
    if detail is not None:
        body["messages"][0]["content"][0]["image_url"]["detail"] = detail
    parsed = await parse_chat_request(json.dumps(body).encode(), settings)
    assert isinstance(parsed, ChatCompletionRequest)
    return await prepare_chat(parsed, settings, frozenset({MODEL}))


async def test_a_gif_is_re_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_threads(monkeypatch, prepare, "_check_one")
    settings = gateway_settings("http://127.0.0.1:1", verify_image_decode=False)
    prepared = await _prepare(data_uri(palette_gif(512), "image/gif"), settings)
    assert prepared.images[0].format == "png"
    assert off_the_loop(seen)


async def test_a_many_pixel_image_is_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.validation import pixels

    seen = record_threads(monkeypatch, pixels, "verify_decode")
    settings = gateway_settings("http://127.0.0.1:1", max_image_pixels=4096 * 4096)
    prepared = await _prepare(data_uri(palette_png()), settings)
    await prepared.pixels.verify()
    assert off_the_loop(seen)


async def test_a_typical_photo_is_checked_and_decoded_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.validation import pixels

    prepared_in = record_threads(monkeypatch, prepare, "_check_one")
    decoded_in = record_threads(monkeypatch, pixels, "verify_decode")
    photo = image_bytes("JPEG", (640, 480), quality=90)
    settings = gateway_settings("http://127.0.0.1:1", max_image_pixels=4096 * 4096)
    prepared = await _prepare(data_uri(photo, "image/jpeg"), settings)
    await prepared.pixels.verify()
    main = threading.main_thread().name
    assert (prepared_in, decoded_in) == ([main], [main])
    assert prepared.pixels.images == ()  # the decoded bytes are let go of once checked


async def test_a_body_of_many_objects_is_parsed_and_validated_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    real = parse.parse_chat_body

    def recording(data: dict[str, Any]) -> Any:
        seen.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr(parse, "parse_chat_body", recording)
    many = _empty_messages(200)  # 4 KB, but 200 objects to build and validate
    await parse_chat_request(json.dumps(many).encode(), SETTINGS)
    photo = image_chat_body("is this bag real leather?", data_uri(noise_png(150)))
    assert len(json.dumps(photo)) > 64 * 1024  # one long string: parsed in microseconds
    await parse_chat_request(json.dumps(photo).encode(), SETTINGS)
    main = threading.main_thread().name
    assert seen[0] != main  # many objects: in a thread
    assert seen[1] == main  # a photo: a thread hop would cost more than the work


# --- a very large body is parsed in a process of its own (the GIL would stall a thread) -----


async def test_a_very_large_body_is_parsed_in_a_child_process() -> None:
    parser = BodyParser(SETTINGS)
    try:
        with pytest.raises(GatewayError) as caught:
            await parser.parse_chat(json.dumps(_empty_messages(300_000)).encode())
        assert (caught.value.code, caught.value.param) == (ErrorCode.INVALID_REQUEST, "messages")
        assert parser._executor is not None  # the child did the work
        photo = data_uri(noise_png(700), "image/png")
        body = json.dumps(image_chat_body("what is it?", photo)).encode()
        assert len(body) > PROCESS_BODY_BYTES
        parsed = await parser.parse_chat(body)
        assert isinstance(parsed, ChatCompletionRequest)
        assert parsed.messages[0].content[0].image_url.url == photo  # type: ignore[index,union-attr]
    finally:
        parser.close()


async def test_a_large_photo_body_is_not_sent_to_the_child_process() -> None:
    """Few values, however long: parsed in a thread, never pickled to the child and back."""
    parser = BodyParser(SETTINGS)
    try:
        photo = data_uri(noise_png(700), "image/png")
        body = json.dumps(image_chat_body("what is it?", photo)).encode()
        assert len(body) > PROCESS_BODY_BYTES
        parsed = await parser.parse_chat(body)
        assert isinstance(parsed, ChatCompletionRequest)
        assert parser._executor is None  # no child was started for it
    finally:
        parser.close()


@pytest.mark.parametrize(
    ("objects", "heavy"),
    [(0, False), (bounds.THREAD_BODY_OBJECTS - 1, False), (bounds.THREAD_BODY_OBJECTS + 1, True)],
)
def test_a_body_is_parsed_in_a_thread_by_its_objects(objects: int, heavy: bool) -> None:
    # One message holds one object; the body's own braces add one more.
    messages = [{"role": "user", "content": "x"}] * objects
    raw = json.dumps({"model": MODEL, "messages": messages}).encode()
    assert raw.count(b"{") == objects + 1
    assert bounds.heavy_body(raw) is heavy


def test_a_photo_body_is_parsed_on_the_loop_and_a_huge_one_in_a_thread() -> None:
    photo = json.dumps(image_chat_body(data_uri(image_bytes("JPEG", (640, 480))))).encode()
    assert not bounds.heavy_body(photo)
    assert bounds.heavy_body(photo + b" " * bounds.THREAD_BODY_BYTES)


# --- every endpoint parses through the one parser, which follows the value count -------------


def _many_values(body: dict[str, Any], count: int) -> bytes:
    """``body`` plus ``count`` empty arrays: 3 bytes a value, about 1 MB for 350,000."""
    return json.dumps({**body, "x": [[]] * count}, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("raw", "place"),
    [
        (_many_values({}, 340_000), "process"),  # under 1 MiB: its values decide
        (_many_values({}, bounds.PROCESS_BODY_VALUES + 2), "process"),  # n - 1 commas
        (_many_values({}, bounds.PROCESS_BODY_VALUES - 8), "loop"),  # 12 KB, no object
        (json.dumps(_empty_messages(200)).encode(), "thread"),
        (json.dumps(image_chat_body("x", data_uri(noise_png(700)))).encode(), "thread"),
        (json.dumps(chat_body("hello")).encode(), "loop"),
    ],
)
def test_where_a_body_is_parsed_follows_its_values_then_its_size(raw: bytes, place: str) -> None:
    assert bounds.body_place(raw) == place


def _parent_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the bodies this process (not the parser's child) turns into JSON."""
    sizes: list[int] = []
    real = parse.load_json_object

    def recording(raw: bytes) -> dict[str, Any]:
        sizes.append(len(raw))
        return real(raw)

    monkeypatch.setattr(parse, "load_json_object", recording)
    return sizes


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # The simple shape's own endpoint parsed every body in a thread (5 s for 16 MB).
        ("/v1/vqa", {"image": "x", "prompt": "y"}),
        # Under 1 MiB, the chat endpoint kept 350,000 values in a thread (0.5 s for 350,000).
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
async def test_every_endpoint_parses_a_body_of_many_values_in_the_child(
    monkeypatch: pytest.MonkeyPatch,
    fake_worker: FakeWorker,
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
) -> None:
    parents = _parent_parses(monkeypatch)
    raw = _many_values(body, 340_000)
    assert len(raw) < PROCESS_BODY_BYTES
    async with run_gateway(fake_worker.url, **PRODUCTION) as url:
        headers = {"Content-Type": "application/json"}
        refused = await http.post(url + path, content=raw, headers=headers, timeout=120)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == {
            "message": "'x' is not a supported parameter.",
            "type": "invalid_request_error",
            "param": "x",
            "code": "unsupported_parameter",
        }
        assert len(raw) not in parents  # the child parsed it; the replica's loop stayed free
        small = json.dumps({**body, "x": [[]] * 8}).encode()
        again = await http.post(url + path, content=small, headers=headers)
        assert again.json()["error"]["code"] == "unsupported_parameter"
        assert len(small) in parents  # a small body stays in the replica: no trip for it
