"""The full image decode (GATEWAY_VERIFY_IMAGE_DECODE) runs only on the paths that send an
image to a worker, after the cache lookup: a corrupt image still gets our 400 and no
worker ever sees it (forwarded, streamed, the simple shape, moderation's image check),
while a cache hit decodes no pixels at all."""

from __future__ import annotations

import uuid

import httpx
import pytest

from gateway import images
from gateway.moderation import ModerationSettings
from gateway.validation.pixels import DecodedImages
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import b64, data_uri, image_bytes
from tests.support.requests import image_chat_body, vqa_body
from tests.support.servers import run_gateway

CHAT = "/v1/chat/completions"
# The header (and so the format, dimensions and digest) is intact; the pixel data is cut.
CORRUPT = image_bytes("PNG", (300, 200))[:-40]
IMAGE_PARAM = "messages[0].content[0].image_url.url"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full decode the in-process gateway runs, by image format."""
    calls: list[str] = []
    real = images._decodes

    def counting(data: bytes, fmt: images.ImageFormat, size: tuple[int, int]) -> bool:
        calls.append(fmt)
        return real(data, fmt, size)

    monkeypatch.setattr(images, "_decodes", counting)
    return calls


def _chat_requests(worker: FakeWorker) -> int:
    return len(worker.requests)


def _assert_invalid_image(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_image", param)
    assert error["message"] == "The image could not be decoded."


async def test_a_corrupt_image_gets_our_400_and_never_reaches_a_worker(
    fake_worker: FakeWorker, http: httpx.AsyncClient, decodes: list[str]
) -> None:
    namespace = f"test-pixels-{uuid.uuid4().hex[:8]}"
    before = _chat_requests(fake_worker)
    async with run_gateway(fake_worker.url, cache_enabled=True, cache_namespace=namespace) as url:
        corrupt = data_uri(CORRUPT)
        for stream in (False, True):
            body = image_chat_body("what is this?", corrupt, temperature=0, stream=stream)
            _assert_invalid_image(await http.post(url + CHAT, json=body), IMAGE_PARAM)
        vqa = vqa_body(b64(CORRUPT), "what is this?")
        _assert_invalid_image(await http.post(url + "/v1/vqa", json=vqa), "image")
        # Twice more: a refused image leaves nothing in the cache to be served from.
        body = image_chat_body("what is this?", corrupt, temperature=0)
        _assert_invalid_image(await http.post(url + CHAT, json=body), IMAGE_PARAM)
    assert _chat_requests(fake_worker) == before
    assert decodes == ["png"] * 4


async def test_a_cache_hit_decodes_no_pixels(
    fake_worker: FakeWorker, http: httpx.AsyncClient, decodes: list[str]
) -> None:
    namespace = f"test-pixels-{uuid.uuid4().hex[:8]}"
    photo = data_uri(image_bytes("JPEG", (320, 240)), "image/jpeg")
    body = image_chat_body("is this leather?", photo, temperature=0, max_tokens=8)
    async with run_gateway(fake_worker.url, cache_enabled=True, cache_namespace=namespace) as url:
        first = await http.post(url + CHAT, json=body)
        assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
        assert decodes == ["jpeg"]  # the miss decoded its image before the worker saw it
        for stream in (False, True):
            again = await http.post(url + CHAT, json={**body, "stream": stream})
            assert (again.status_code, again.headers["x-cache"]) == (200, "hit"), again.text
    assert decodes == ["jpeg"]


async def test_a_photo_is_decoded_once_for_all_the_questions_about_it(
    fake_worker: FakeWorker, http: httpx.AsyncClient, decodes: list[str]
) -> None:
    # Different questions are different cache keys (misses), about the same bytes: their
    # decode was done once, without error. A refused image is decoded every time (above).
    photo = data_uri(image_bytes("JPEG", (320, 240)), "image/jpeg")
    other = data_uri(image_bytes("PNG", (64, 48)))
    before = _chat_requests(fake_worker)
    async with run_gateway(fake_worker.url) as url:
        for question in ("is this leather?", "what brand is it?", "a gift for my mother?"):
            body = image_chat_body(question, photo, max_tokens=8)
            answer = await http.post(url + CHAT, json=body)
            assert (answer.status_code, answer.headers["x-cache"]) == (200, "bypass")
        await http.post(url + CHAT, json=image_chat_body("and this?", other, max_tokens=8))
    assert _chat_requests(fake_worker) == before + 4
    assert decodes == ["jpeg", "png"]


async def test_with_the_check_off_the_gateway_forwards_without_decoding(
    fake_worker: FakeWorker, http: httpx.AsyncClient, decodes: list[str]
) -> None:
    before = _chat_requests(fake_worker)
    async with run_gateway(fake_worker.url, verify_image_decode=False) as url:
        body = image_chat_body("what is this?", data_uri(CORRUPT))
        assert (await http.post(url + CHAT, json=body)).status_code == 200
    assert _chat_requests(fake_worker) == before + 1
    assert decodes == []


async def test_moderations_image_check_never_sends_a_corrupt_image(
    fake_worker: FakeWorker, http: httpx.AsyncClient, decodes: list[str]
) -> None:
    namespace = f"test-pixels-{uuid.uuid4().hex[:8]}"
    moderation = ModerationSettings(image_check=True)
    before = _chat_requests(fake_worker)
    async with run_gateway(
        fake_worker.url, cache_enabled=True, cache_namespace=namespace, moderation=moderation
    ) as url:
        body = image_chat_body("what is this?", data_uri(CORRUPT), temperature=0)
        _assert_invalid_image(await http.post(url + CHAT, json=body), IMAGE_PARAM)
    assert _chat_requests(fake_worker) == before  # not even the moderation question
    assert decodes == ["png"]


def test_decoded_images_keeps_the_most_recently_used_digests() -> None:
    decoded = DecodedImages(capacity=2)
    decoded.add("a")
    decoded.add("b")
    assert "a" in decoded  # now the most recent
    decoded.add("c")  # pushes out "b", the least recently used
    assert ("a" in decoded, "b" in decoded, "c" in decoded) == (True, False, True)
