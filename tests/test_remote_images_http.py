"""Remote image URLs through the gateway over HTTP: off by default; when on, the worker
receives the fetched, checked bytes as a data URI, keyed (cache, log) by their digest;
every refusal is a 400 in the one error shape naming the field. One end-to-end test with
the real engine and the interaction log in MariaDB."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.protocol import ErrorResponse
from gateway.remote_images import RemoteImageSettings
from tests.doubles.fake_worker import FakeWorker
from tests.doubles.image_server import PNG, ImageServer, running
from tests.support.bad_requests import MARKER
from tests.support.images import data_uri
from tests.support.metrics import scrape, total
from tests.support.requests import chat_body, image_chat_body, vqa_body
from tests.support.servers import run_gateway
from tests.support.worker import TINY_MODEL_NAME

PARAM = "messages[0].content[0].image_url.url"


@pytest.fixture(scope="module")
async def images() -> AsyncIterator[ImageServer]:
    async with running(ImageServer()) as server:
        yield server


def remote_settings(images: ImageServer) -> RemoteImageSettings:
    return RemoteImageSettings(
        enabled=True,
        allowed_hosts=("127.0.0.1",),
        allowed_ports=(images.port,),
        # The test server is on loopback, which is blocked unless exempted.
        allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        max_bytes=100_000,
        timeout_s=2.0,
    )


@pytest.fixture(scope="module")
async def remote_gateway(fake_worker: FakeWorker, images: ImageServer) -> AsyncIterator[str]:
    async with run_gateway(
        fake_worker.url,
        remote_images=remote_settings(images),
        cache_enabled=True,
        cache_namespace=f"test-remote-{uuid.uuid4().hex[:8]}",
    ) as url:
        yield url


def remote_chat(url: str, **extra: Any) -> dict[str, Any]:
    return image_chat_body("what is this?", url, temperature=0, **extra)


def assert_refused(response: httpx.Response, code: str, param: str = PARAM) -> None:
    assert response.status_code == 400, response.text
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.code, error.param, error.type) == (code, param, "invalid_request_error")
    assert MARKER not in response.text  # the URL (and its credentials) never come back


async def test_off_by_default(
    fake_gateway: str, fake_worker: FakeWorker, images: ImageServer, http: httpx.AsyncClient
) -> None:
    seen, hits = len(fake_worker.requests), sum(images.hits.values())
    url = images.url(f"/image.png?{MARKER}")
    response = await http.post(f"{fake_gateway}/v1/chat/completions", json=remote_chat(url))
    assert_refused(response, "remote_image_url_unsupported")
    simple = await http.post(f"{fake_gateway}/v1/vqa", json=vqa_body(url, "what?"))
    assert_refused(simple, "remote_image_url_unsupported", param="image")
    assert len(fake_worker.requests) == seen
    assert sum(images.hits.values()) == hits  # nothing was fetched


async def test_worker_receives_the_image_as_data(
    remote_gateway: str, fake_worker: FakeWorker, images: ImageServer, http: httpx.AsyncClient
) -> None:
    url = images.url("/image.png")  # the module's gateway has a cache namespace of its own
    response = await http.post(f"{remote_gateway}/v1/chat/completions", json=remote_chat(url))
    assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == "miss"
    part = fake_worker.requests[-1][1]["messages"][0]["content"][0]
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    # The key is the digest of the bytes: the same photo sent inline is the same request.
    seen = len(fake_worker.requests)
    inline = await http.post(
        f"{remote_gateway}/v1/chat/completions", json=remote_chat(data_uri(PNG))
    )
    assert (inline.status_code, inline.headers["x-cache"]) == (200, "hit")
    assert len(fake_worker.requests) == seen


async def test_simple_shape_and_streams_take_urls(
    remote_gateway: str, fake_worker: FakeWorker, images: ImageServer, http: httpx.AsyncClient
) -> None:
    url = images.url("/hops/2")  # redirects within the allowed host are followed
    headers = {"Cache-Control": "no-cache"}
    simple = await http.post(
        f"{remote_gateway}/v1/vqa", json=vqa_body(url, "what?"), headers=headers
    )
    assert simple.status_code == 200, simple.text
    sent = fake_worker.requests[-1][1]["messages"][0]["content"][0]["image_url"]["url"]
    assert sent == data_uri(PNG)
    streamed = await http.post(
        f"{remote_gateway}/v1/chat/completions",
        json=remote_chat(url, stream=True),
        headers=headers,
    )
    assert streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert fake_worker.requests[-1][1]["messages"][0]["content"][0]["image_url"]["url"] == sent


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/bmp-as-png", "invalid_image"),
        ("/svg-as-png", "invalid_image"),
        ("/text-as-png", "invalid_image"),
        ("/large", "remote_image_too_large"),
        ("/large-chunked", "remote_image_too_large"),
        ("/missing", "remote_image_fetch_failed"),
        ("/hops/5", "remote_image_too_many_redirects"),
    ],
)
async def test_bad_remote_images_are_refused(
    remote_gateway: str,
    fake_worker: FakeWorker,
    images: ImageServer,
    http: httpx.AsyncClient,
    path: str,
    code: str,
) -> None:
    seen = len(fake_worker.requests)
    separator = "&" if "?" in path else "?"
    url = images.url(f"{path}{separator}{MARKER}")
    response = await http.post(f"{remote_gateway}/v1/chat/completions", json=remote_chat(url))
    assert_refused(response, code)
    assert len(fake_worker.requests) == seen


@pytest.mark.parametrize(
    ("make_url", "code"),
    [
        (lambda s: f"http://user:{MARKER}@127.0.0.1:{s.port}/image.png", "invalid_image_url"),
        (
            lambda s: f"http://{MARKER.lower()}.test:{s.port}/image.png",
            "remote_image_host_not_allowed",
        ),
        (lambda s: f"http://127.0.0.1:{s.port + 1}/{MARKER}", "remote_image_host_not_allowed"),
        (lambda s: f"ftp://127.0.0.1:{s.port}/{MARKER}", "invalid_image_url"),
    ],
    ids=["credentials", "host", "port", "scheme"],
)
async def test_urls_refused_before_any_fetch(
    remote_gateway: str, images: ImageServer, http: httpx.AsyncClient, make_url: Any, code: str
) -> None:
    hits = sum(images.hits.values())
    response = await http.post(
        f"{remote_gateway}/v1/chat/completions", json=remote_chat(make_url(images))
    )
    assert_refused(response, code)
    assert sum(images.hits.values()) == hits


async def test_a_bad_inline_image_is_refused_before_any_fetch(
    remote_gateway: str, images: ImageServer, http: httpx.AsyncClient
) -> None:
    hits = sum(images.hits.values())
    broken = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    body = image_chat_body("compare", images.url("/image.png"), broken, temperature=0)
    response = await http.post(f"{remote_gateway}/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert ErrorResponse.model_validate_json(response.content).error.param == (
        "messages[0].content[1].image_url.url"
    )
    assert sum(images.hits.values()) == hits


async def test_fetch_metrics(
    remote_gateway: str, images: ImageServer, http: httpx.AsyncClient
) -> None:
    body = remote_chat(images.url("/image.png"))
    await http.post(f"{remote_gateway}/v1/chat/completions", json=body)
    samples = await scrape(http, remote_gateway)
    assert total(samples, "gateway_remote_image_fetches_total", lambda k: '"ok"' in k) >= 1
    assert total(samples, "gateway_remote_image_bytes_sum") >= len(PNG)
    assert total(samples, "gateway_remote_image_fetch_duration_seconds_count") >= 1


@pytest.mark.engine
async def test_real_engine_answers_about_a_remote_image(
    worker_url: str, log_database_url: str, images: ImageServer, tmp_path: Path
) -> None:
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url),
        spool_path=tmp_path / "spool.jsonl",
        flush_interval_s=0.1,
    )
    request_id = f"remote-{uuid.uuid4().hex}"
    body = image_chat_body(
        "What is in this photo?", images.url("/image.png"), model=TINY_MODEL_NAME, max_tokens=5
    )
    text_only = chat_body("What is in this photo?", model=TINY_MODEL_NAME, max_tokens=5)
    gateway = run_gateway(worker_url, remote_images=remote_settings(images), log=log)
    async with gateway as url, httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{url}/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
        )
        baseline = await client.post(f"{url}/v1/chat/completions", json=text_only)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    # The engine saw the image: its tokens come on top of the text's.
    assert answer["usage"]["prompt_tokens"] > baseline.json()["usage"]["prompt_tokens"]
    status, logged = await asyncio.to_thread(logged_images, log_database_url, request_id)
    assert status == 200
    assert logged[0]["digest"] == hashlib.sha256(PNG).hexdigest()
    assert (logged[0]["width"], logged[0]["height"]) == (40, 30)


def logged_images(database_url: str, request_id: str) -> tuple[int, list[dict[str, Any]]]:
    """Status and images of the request's row, once the writer's batch has landed."""
    engine = create_sync_engine(database_url)
    query = text("SELECT status_code, images FROM interactions WHERE request_id LIKE :prefix")
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                row = conn.execute(query, {"prefix": f"{request_id}.%"}).one_or_none()
            if row is not None or time.monotonic() > deadline:
                assert row is not None, "no interaction row was written"
                return int(row.status_code), json.loads(row.images)
            time.sleep(0.1)
    finally:
        engine.dispose()
