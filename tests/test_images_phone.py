"""Phone photos: HEIC/HEIF accepted and converted, detail's resize policy on both API
shapes, and the token estimate counting images as the checkpoint's processor does."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.images import ImageLimits, check_image
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.validation.parse import parse_chat_request
from gateway.validation.prepare import PreparedRequest, prepare_chat, prepare_vqa
from tests.support.images import data_uri, truncated
from tests.support.photos import heic, phone_photo, upright_picture
from tests.support.requests import MODEL, image_chat_body, vqa_body
from tests.support.servers import gateway_settings

# The tests' limits cap images at 1 MP; phone photos need the default's 16.7 MP.
PHONE = {"max_image_pixels": 4096 * 4096}
SETTINGS = gateway_settings("http://127.0.0.1:1", **PHONE)
KNOWN = frozenset({MODEL})


async def _prepare(uri: str, detail: str | None = None, **overrides: Any) -> PreparedRequest:
    body = image_chat_body("what is it?", uri)
    if detail is not None:
        body["messages"][0]["content"][0]["image_url"]["detail"] = detail
    settings = gateway_settings("http://127.0.0.1:1", **{**PHONE, **overrides})
    parsed = await parse_chat_request(json.dumps(body).encode(), settings)
    assert isinstance(parsed, ChatCompletionRequest)
    return await prepare_chat(parsed, settings, KNOWN)


async def _error(uri: str, **overrides: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await _prepare(uri, **overrides)
    return caught.value


def _sent(prepared: PreparedRequest) -> tuple[str, Image.Image]:
    url = json.loads(prepared.body)["messages"][0]["content"][0]["image_url"]["url"]
    mime, payload = url.split(";base64,", 1)
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        image.load()
        return mime.removeprefix("data:"), image


# --- HEIC / HEIF --------------------------------------------------------------------------


@pytest.mark.parametrize("mime", ["image/heic", "image/heif"])
async def test_a_heic_photo_reaches_the_worker_as_a_jpeg(mime: str) -> None:
    upright = upright_picture((320, 240))
    prepared = await _prepare(data_uri(heic(upright), mime))
    sent_mime, sent = _sent(prepared)
    assert (sent_mime, sent.format, sent.size) == ("image/jpeg", "JPEG", (320, 240))
    info = prepared.images[0]
    assert (info.format, info.width, info.height) == ("jpeg", 320, 240)
    # The same picture: its corner mark where the upright picture has it.
    assert sent.convert("RGB").getpixel((5, 5))[2] > 150  # type: ignore[index]
    await prepared.pixels.verify()  # the converted image passes the full decode check


async def test_a_heic_photo_over_the_pixel_cap_is_refused_before_decoding() -> None:
    error = await _error(data_uri(heic(upright_picture((320, 240))), "image/heic"),
                         max_image_pixels=100 * 100)  # fmt: skip
    assert error.code == ErrorCode.IMAGE_TOO_LARGE
    assert "320x240" in error.message


async def test_a_truncated_heic_is_our_400() -> None:
    data = heic(upright_picture((320, 240)))
    error = await _error(data_uri(truncated(data, 0.6), "image/heic"))
    assert error.code == ErrorCode.INVALID_IMAGE


def test_a_heic_that_does_not_decode_fails_the_full_decode_check() -> None:
    data = heic(upright_picture((320, 240)))
    start = data.index(b"mdat") + 4  # the coded picture, not the boxes that give its size
    broken = data[:start] + b"\x00" * (len(data) - start)
    with pytest.raises(GatewayError) as caught:
        check_image(data_uri(broken, "image/heic"), ImageLimits(10**7, verify_decode=True))
    assert caught.value.code == ErrorCode.INVALID_IMAGE


async def test_an_unsupported_type_names_every_accepted_one() -> None:
    error = await _error(data_uri(b"BM....", "image/bmp"))
    assert error.code == ErrorCode.UNSUPPORTED_IMAGE_TYPE
    for name in ("image/jpeg", "image/png", "image/webp", "image/gif", "image/heic"):
        assert name in error.message


# --- detail: the resize policy --------------------------------------------------------------


@pytest.mark.parametrize("detail", [None, "auto", "high"])
async def test_high_and_auto_send_a_phone_photo_at_the_high_detail_budget(
    detail: str | None,
) -> None:
    """4032 x 3024 is 12.2 MP; the processor would see it at 1664 x 1248 with a 2,097,152
    pixel budget: that is what the worker gets, and what the estimate counts."""
    prepared = await _prepare(data_uri(phone_photo(4032, 3024), "image/jpeg"), detail)
    sent_mime, sent = _sent(prepared)
    assert (sent_mime, sent.size) == ("image/jpeg", (1664, 1248))
    assert prepared.image_tokens == 52 * 39


async def test_the_high_detail_budget_is_a_setting() -> None:
    photo = data_uri(phone_photo(1920, 1080), "image/jpeg")
    assert _sent(await _prepare(photo))[0:1] == ("image/jpeg",)
    as_sent = await _prepare(photo)
    assert _sent(as_sent)[1].size == (1920, 1080)  # within the default: as it was sent
    smaller = await _prepare(photo, image_high_detail_pixels=1280 * 720)
    assert _sent(smaller)[1].size == (1280, 704)


async def test_vqa_accepts_detail() -> None:
    photo = phone_photo(1280, 960)
    request = VQARequest.model_validate(
        vqa_body(base64.b64encode(photo).decode(), "what is it?", detail="low")
    )
    prepared = await prepare_vqa(request, SETTINGS, KNOWN)
    assert prepared.images[0].pixels <= SETTINGS.image_low_detail_pixels
    high = await prepare_vqa(
        VQARequest.model_validate(vqa_body(base64.b64encode(photo).decode(), "what?")),
        SETTINGS,
        KNOWN,
    )
    assert (high.images[0].width, high.images[0].height) == (1280, 960)


async def test_the_estimate_counts_images_as_the_processor_does() -> None:
    """A small image is scaled up to the processor's min_pixels; the bounds are settings."""
    icon = await _prepare(data_uri(phone_photo(96, 96), "image/jpeg"))
    assert icon.image_tokens == 64  # 256 x 256: min_pixels 65,536
    tiny = await _prepare(
        data_uri(phone_photo(1920, 1080), "image/jpeg"), image_processor_max_pixels=512 * 512
    )
    assert tiny.image_tokens == 21 * 12  # 672 x 384 in the processor
