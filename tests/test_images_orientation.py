"""EXIF orientation: applied before anything looks at pixels (re-encode, digest, cache key),
the way vLLM loads an image, and the caller's bytes kept when no transposition is needed."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image, ImageOps

from gateway.images import sniff_format
from gateway.orientation import read_orientation
from gateway.protocol import ChatCompletionRequest
from gateway.validation.parse import parse_chat_request
from gateway.validation.prepare import PreparedRequest, prepare_chat
from tests.support.images import data_uri
from tests.support.photos import encode, stored_for, tagged, upright_picture
from tests.support.requests import MODEL, image_chat_body
from tests.support.servers import gateway_settings

SETTINGS = gateway_settings("http://127.0.0.1:1")
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


async def _prepare(uri: str, detail: str | None = None, **overrides: Any) -> PreparedRequest:
    body = image_chat_body("which way is up?", uri, temperature=0)
    if detail is not None:
        body["messages"][0]["content"][0]["image_url"]["detail"] = detail
    settings = gateway_settings("http://127.0.0.1:1", **overrides) if overrides else SETTINGS
    parsed = await parse_chat_request(json.dumps(body).encode(), settings)
    assert isinstance(parsed, ChatCompletionRequest)
    return await prepare_chat(parsed, settings, frozenset({MODEL}))


def _sent_image(prepared: PreparedRequest) -> Image.Image:
    """The image the worker receives, decoded."""
    body = json.loads(prepared.body)
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return ImageOps.exif_transpose(image.convert("RGB"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_orientation_is_read_from_the_header(fmt: str, orientation: int) -> None:
    data = tagged(upright_picture(), fmt, orientation)
    fmt_name = sniff_format(data)
    assert fmt_name is not None
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif().get(0x0112) == orientation  # what vLLM's loader reads
    assert read_orientation(data, fmt_name) == orientation


def test_an_untagged_image_and_a_malformed_exif_block_read_as_upright() -> None:
    plain = encode(upright_picture(), "JPEG")
    assert read_orientation(plain, "jpeg") == 1
    # An APP1 "Exif" segment whose TIFF header is garbage: upright, as Pillow reads it.
    broken = plain[:2] + b"\xff\xe1\x00\x10Exif\x00\x00GARBAGE!" + plain[2:]
    assert read_orientation(broken, "jpeg") == 1
    assert read_orientation(plain[:40], "jpeg") == 1  # truncated before any EXIF


@pytest.mark.parametrize("detail", [None, "low", "high"])
async def test_the_worker_gets_a_tagged_photo_upright(detail: str | None) -> None:
    """A sideways-stored photo tagged 6 (the phone held upright): the worker gets it
    upright, sizes as displayed, and the image carries no tag to apply twice."""
    upright = upright_picture((640, 480))
    prepared = await _prepare(data_uri(tagged(upright, "PNG", 6), MIME["PNG"]), detail)
    info = prepared.images[0]
    assert info.width > info.height  # stored 480 x 640, displayed 640 x 480
    sent = _sent_image(prepared)
    assert sent.size == (info.width, info.height)
    expected = upright.resize(sent.size, Image.Resampling.BICUBIC) if detail == "low" else upright
    # Same picture: the upright image's corner mark is where the model sees it.
    assert sent.getpixel((5, 5))[2] > 200  # type: ignore[index]
    assert sent.getpixel((sent.width - 5, sent.height - 5))[2] < 50  # type: ignore[index]
    if detail != "low":
        assert sent.tobytes() == expected.tobytes()


@pytest.mark.parametrize("detail", ["low", None])
async def test_a_sideways_photo_and_the_tagged_one_do_not_share_a_key(detail: str | None) -> None:
    upright = upright_picture((640, 480))
    sideways = stored_for(upright, 6)
    tagged_uri = data_uri(tagged(upright, "JPEG", 6, quality=90), MIME["JPEG"])
    untagged_uri = data_uri(encode(sideways, "JPEG", quality=90), MIME["JPEG"])
    tagged_one = await _prepare(tagged_uri, detail)
    untagged_one = await _prepare(untagged_uri, detail)
    assert tagged_one.canonical != untagged_one.canonical
    assert tagged_one.images[0].sha256 != untagged_one.images[0].sha256


@pytest.mark.parametrize("detail", [None, "low", "high"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
async def test_a_tagged_photo_and_the_same_photo_stored_upright_share_a_key(
    detail: str | None, orientation: int
) -> None:
    upright = upright_picture((640, 480))
    rotated = await _prepare(data_uri(encode(upright, "PNG"), MIME["PNG"]), detail)
    by_tag = await _prepare(data_uri(tagged(upright, "PNG", orientation), MIME["PNG"]), detail)
    assert by_tag.images[0].sha256 == rotated.images[0].sha256
    assert by_tag.canonical == rotated.canonical


async def test_an_upright_photo_is_sent_as_its_caller_sent_it() -> None:
    """No transposition needed (no tag, or tag 1): no re-encode, the caller's bytes."""
    for data in (
        encode(upright_picture((320, 240)), "JPEG"),
        tagged(upright_picture((320, 240)), "JPEG", 1),
    ):
        uri = data_uri(data, MIME["JPEG"])
        prepared = await _prepare(uri)
        assert json.loads(prepared.body)["messages"][0]["content"][0]["image_url"]["url"] == uri
