"""gateway.validation.bounds at its edges: each limit exactly at and just past its value,
the images fetched from a URL judged by their bytes, the pixels of several images added
up, and headers that cannot be read declaring nothing. (The thread each size ends up in,
through the gateway: tests/test_hardening_bounds.py.)"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.errors import GatewayError
from gateway.protocol import ChatCompletionRequest
from gateway.validation import bounds, prepare
from gateway.validation.bounds import (
    check_counts,
    decode_ns,
    heavy_body,
    heavy_work,
    image_format,
    image_pixels,
)
from gateway.validation.parse import parse_chat_body
from gateway.validation.prepare import prepare_chat
from tests.support.images import b64, data_uri, image_bytes
from tests.support.requests import MODEL, image_chat_body
from tests.support.servers import gateway_settings
from tests.support.threads import off_the_loop, record_threads

SETTINGS = gateway_settings("http://127.0.0.1:1")
REMOTE = "https://shop.example/bag"  # a fetched image: its bytes are passed beside it
RECODE = bounds.THREAD_RECODE_PIXELS


def gif(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("P", (width, height), 0).save(out, "GIF")
    return out.getvalue()


def gif_uri(width: int, height: int) -> str:
    return data_uri(gif(width, height), "image/gif")


def test_a_body_is_heavy_just_past_its_size_or_its_objects() -> None:
    assert not heavy_body(b" " * bounds.THREAD_BODY_BYTES)
    assert heavy_body(b" " * (bounds.THREAD_BODY_BYTES + 1))
    # Adjacent braces, from the first byte on: each one counts.
    assert not heavy_body(b"{" * bounds.THREAD_BODY_OBJECTS)
    assert heavy_body(b"{" * (bounds.THREAD_BODY_OBJECTS + 1))


def test_content_parts_are_refused_just_past_their_limit() -> None:
    limit = SETTINGS.max_content_parts
    part = {"type": "text", "text": "x"}
    check_counts({"messages": [{"role": "user", "content": [part] * limit}]}, SETTINGS)
    with pytest.raises(GatewayError) as caught:
        check_counts({"messages": [{"role": "user", "content": [part] * (limit + 1)}]}, SETTINGS)
    assert caught.value.param == "messages[0].content"


def test_messages_that_are_not_objects_are_left_to_the_typed_validation() -> None:
    check_counts({"messages": ["hello", 3, None, ["x"]]}, SETTINGS)  # no crash, no verdict


def test_the_decode_cost_grows_with_the_bytes_and_the_pixels() -> None:
    assert decode_ns("jpeg", 100 * 100, 100_000) > decode_ns("jpeg", 100 * 100, 10_000)
    assert decode_ns("png", 2000 * 2000, 1000) > decode_ns("png", 1000 * 1000, 1000)


def test_preparing_is_heavy_just_past_each_limit() -> None:
    assert not heavy_work(messages=bounds.THREAD_MESSAGES)
    assert heavy_work(messages=bounds.THREAD_MESSAGES + 1)
    assert not heavy_work(text_chars=bounds.THREAD_TEXT_CHARS)
    assert heavy_work(text_chars=bounds.THREAD_TEXT_CHARS + 1)
    # Base64 that is no known image: only its size counts.
    assert not heavy_work(references=["A" * bounds.THREAD_BASE64_CHARS])
    assert heavy_work(references=["A" * (bounds.THREAD_BASE64_CHARS + 1)])


def test_a_fetched_image_is_judged_by_its_bytes() -> None:
    assert heavy_work(references=[REMOTE], fetched=[bytes(bounds.THREAD_BASE64_CHARS + 1)])
    assert heavy_work(references=[REMOTE], fetched=[gif(64, 64)])  # a GIF is re-encoded
    photo = [image_bytes("JPEG", (1024, 768))]
    shrunk = heavy_work(references=[REMOTE], fetched=photo, low_detail=[True],
                        low_detail_pixels=512 * 512)  # fmt: skip
    within = heavy_work(references=[REMOTE], fetched=photo, low_detail=[True],
                        low_detail_pixels=1024 * 768)  # fmt: skip
    assert (shrunk, within) == (True, False)
    assert image_format(REMOTE, gif(64, 32)) == "gif"
    assert image_pixels(REMOTE, gif(64, 32)) == 64 * 32


def test_the_pixels_to_re_encode_add_up_over_the_images_up_to_the_limit() -> None:
    assert RECODE == 64 * 32
    assert not heavy_work(references=[gif_uri(64, 32)])  # exactly the limit
    assert heavy_work(references=[gif_uri(RECODE + 1, 1)])
    third = gif_uri(32, 32)  # 1,024 pixels
    assert not heavy_work(references=[third, third])
    assert heavy_work(references=[third, third, third])
    # An image without pixel work before a GIF does not end the count.
    photo = data_uri(image_bytes("JPEG", (64, 48)), "image/jpeg")
    assert heavy_work(references=[photo, gif_uri(64, 64)])
    # Detail "low" with no budget given: every image is shrunk, one pixel counts.
    pixel = data_uri(image_bytes("PNG", (1, 1)))
    assert heavy_work(references=[pixel] * (RECODE + 1), low_detail=[True] * (RECODE + 1))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif"])
def test_each_format_is_told_by_its_signature(fmt: str) -> None:
    # WebP's signature takes 12 bytes: all of the 16 base64 characters read.
    uri = data_uri(image_bytes(fmt.upper(), (64, 48)), f"image/{fmt}")
    assert image_format(uri) == fmt
    assert image_pixels(uri) == 64 * 48


def test_the_simple_shapes_bare_base64_is_read_too() -> None:
    bare = b64(gif(64, 64))
    assert image_format(bare) == "gif"
    assert image_pixels(bare) == 64 * 64
    assert heavy_work(references=[bare])


def test_what_has_no_readable_header_declares_nothing() -> None:
    assert image_format(None) is None
    assert image_pixels(None) == 0
    assert image_format("https://shop.example/bag.gif") is None  # not fetched yet
    assert image_pixels("https://shop.example/bag.gif") == 0
    assert image_pixels("data:image/png;base64,!!!!") == 0
    # A JPEG start without a size marker, in either window of the header search.
    assert image_pixels(data_uri(b"\xff\xd8\xff" + bytes(60_000), "image/jpeg")) == 0
    # Bytes of no known format, even where a WebP chunk would sit.
    unknown = b"NOTRIFF!WEBX" + b"VP8L" + bytes(4) + b"\x2f" + bytes(8)
    assert image_pixels(data_uri(unknown)) == 0
    assert image_format(data_uri(gif(64, 64), "image/gif")) == "gif"  # a short data URI


async def test_a_gif_behind_a_long_data_uri_prefix_is_re_encoded_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A data URI may carry parameters before its payload: the header was looked for in
    # the first 16 characters after the start of the reference, found none, and this
    # GIF's first frame (2048 x 2048: 0.1 s here, 4096 x 4096 is allowed) was re-encoded
    # on the event loop.
    padded = "data:image/gif;" + ";".join(["x=y"] * 100) + ";base64," + b64(gif(512, 512))
    assert image_format(padded) == "gif"
    assert image_pixels(padded) == 512 * 512
    assert heavy_work(references=[padded])
    checked_in = record_threads(monkeypatch, prepare, "_check_one")
    parsed = parse_chat_body(image_chat_body("what is it?", padded))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, frozenset({MODEL}))
    assert prepared.images[0].format == "png"
    assert off_the_loop(checked_in), checked_in
