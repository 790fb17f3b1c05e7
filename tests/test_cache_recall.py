"""Issue 24: a hit cheap in proportion to what it must do (gateway/cache/recall.py).

Once a body's answer has been found in the cache, the same body bytes are answered without
being parsed, validated, decoded or hashed again; everything a hit must still do stays:
the key's model permission and limits, moderation, the log row. In-process gateways in
front of the scripted fake worker, the machine's Redis and MariaDB; spies count the
calls into the parser and the image checks (what "not parsed again" means).
"""

from __future__ import annotations

import asyncio
import base64
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

from gateway import images as image_checks
from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.validation import parse as parsing
from tests.doubles.fake_worker import FakeWorker
from tests.doubles.image_server import ImageServer, running
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.images import data_uri, image_bytes
from tests.support.requests import MODEL, image_chat_body, vqa_body
from tests.support.servers import run_gateway
from tests.test_remote_images_http import remote_settings

PHOTO = image_bytes("JPEG", (320, 240))  # a shopper's photo, tens of kilobytes


class Spies:
    """How often a body's JSON was parsed and an image checked (base64, header, digest)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parses = 0
        self.image_checks = 0
        parse, check = parsing.load_json_object, image_checks.check_image

        def counted_parse(*args: Any, **kwargs: Any) -> Any:
            self.parses += 1
            return parse(*args, **kwargs)

        def counted_check(*args: Any, **kwargs: Any) -> Any:
            self.image_checks += 1
            return check(*args, **kwargs)

        monkeypatch.setattr(parsing, "load_json_object", counted_parse)
        monkeypatch.setattr("gateway.validation.prepare.check_image", counted_check)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Spies:
    return Spies(monkeypatch)


@pytest.fixture
async def gateway(
    fake_worker: FakeWorker, log_database_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url),
        flush_interval_s=0.05,
        spool_path=tmp_path / "spool.jsonl",
    )
    async with (
        run_gateway(
            fake_worker.url,
            cache_enabled=True,
            cache_namespace=f"test-recall-{uuid.uuid4().hex[:8]}",
            cache_ttl_s=1,
            cache_local_ttl_s=0.5,
            log=log,
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


def _scripted(worker: FakeWorker, answer: str) -> str:
    prompt = f"is this bag real leather {uuid.uuid4().hex}"
    worker.scripts[prompt] = f"fake:say:{answer}"
    return prompt


def _asked(worker: FakeWorker, text: str) -> list[dict[str, Any]]:
    return [body for _, body in worker.requests if text in json.dumps(body)]


def _streamed_text(response: httpx.Response) -> str:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    choices = [c for event in events for c in json.loads(event).get("choices", ())]
    return "".join(c["delta"].get("content") or "" for c in choices)


def _read_row(database_url: str, request_id: str) -> dict[str, Any]:
    engine = create_sync_engine(database_url)
    query = text(
        "SELECT cache, moderation, prompt, model, status_code, image_count FROM interactions"
        " WHERE request_id LIKE :prefix"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                rows = [
                    dict(r._mapping) for r in conn.execute(query, {"prefix": f"{request_id}.%"})
                ]
            if rows or time.monotonic() > deadline:
                assert len(rows) == 1, rows
                return rows[0]
            time.sleep(0.05)
    finally:
        engine.dispose()


async def _post(
    client: httpx.AsyncClient, raw: bytes, path: str = "/v1/chat/completions", **headers: str
) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return await client.post(path, content=raw, headers=headers)


async def test_the_same_body_again_is_answered_without_parsing_or_image_checks(
    gateway: httpx.AsyncClient, fake_worker: FakeWorker, spies: Spies, log_database_url: str
) -> None:
    prompt = _scripted(fake_worker, "It is real leather.")
    raw = json.dumps(image_chat_body(prompt, data_uri(PHOTO, "image/jpeg"), temperature=0))
    outcomes = [(await _post(gateway, raw.encode())).headers["x-cache"] for _ in range(2)]
    assert outcomes == ["miss", "hit"]
    assert (spies.parses, spies.image_checks) == (2, 2)
    request_id = f"recall-{uuid.uuid4().hex}"
    for i in range(5):
        hit = await _post(gateway, raw.encode(), **{"X-Request-ID": f"{request_id}-{i}"})
        assert hit.headers["x-cache"] == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == "It is real leather."
    assert (spies.parses, spies.image_checks) == (2, 2), "a recalled body was prepared again"
    assert len(_asked(fake_worker, prompt)) == 1
    metrics = (await gateway.get("/metrics")).text
    assert "gateway_cache_recalls_total 5.0" in metrics
    # Everything a hit records is still there.
    row = await asyncio.to_thread(_read_row, log_database_url, f"{request_id}-4")
    assert (row["cache"], row["moderation"], row["status_code"]) == ("hit", "pass", 200)
    assert (row["prompt"], row["model"], row["image_count"]) == (prompt, MODEL, 1)
    # One byte more (a space) is another body: prepared again, yet the same cache key.
    spaced = await _post(gateway, raw.encode() + b" ")
    assert spaced.headers["x-cache"] == "hit"
    assert spies.parses == 3


async def test_a_recalled_body_whose_answer_is_gone_reaches_the_worker_in_full(
    gateway: httpx.AsyncClient, fake_worker: FakeWorker, spies: Spies
) -> None:
    prompt = _scripted(fake_worker, "A fine bag.")
    uri = data_uri(PHOTO, "image/jpeg")
    raw = json.dumps(image_chat_body(prompt, uri, temperature=0, stream=True)).encode()
    for expected in ("miss", "hit", "hit"):
        response = await _post(gateway, raw)
        assert response.headers["x-cache"] == expected
    assert spies.parses == 2
    await asyncio.sleep(1.2)  # the Redis TTL (1 s) and the local one have run out
    again = await _post(gateway, raw)
    assert again.headers["x-cache"] == "miss"
    assert _streamed_text(again) == "A fine bag."
    asked = _asked(fake_worker, prompt)
    assert len(asked) == 2
    # The worker got the whole request again: the image as it was sent, with its uuid.
    part = asked[-1]["messages"][-1]["content"][0]
    assert part["image_url"]["url"] == uri
    assert part["uuid"]
    assert asked[-1]["stream"] is True


async def test_the_simple_shape_is_recalled_on_both_endpoints(
    gateway: httpx.AsyncClient, fake_worker: FakeWorker, spies: Spies
) -> None:
    prompt = _scripted(fake_worker, "Yes.")
    raw = json.dumps(vqa_body(base64.b64encode(PHOTO).decode(), prompt, max_tokens=6)).encode()
    for path in ("/v1/vqa", "/v1/chat/completions"):
        answers = [await _post(gateway, raw, path) for _ in range(3)]
        assert [a.json() for a in answers] == [{"text": "Yes."}] * 3
        assert answers[-1].headers["x-cache"] == "hit"
    assert len(_asked(fake_worker, prompt)) == 1
    # /v1/vqa: a miss and a hit, then recalled; chat: a hit at once (the same key), then
    # recalled.
    assert spies.parses == 3


async def test_a_recalled_body_still_meets_the_keys_permission_and_limits(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    allowed = create_key(log_database_url, "--tpm", "700")
    other_model = create_key(log_database_url, "--models", "some-other-model")
    namespace = f"test-recall-{uuid.uuid4().hex[:8]}"
    prompt = _scripted(fake_worker, "Yes.")
    uri = data_uri(PHOTO, "image/jpeg")
    raw = json.dumps(image_chat_body(prompt, uri, temperature=0, max_tokens=100))
    async with (
        keyed_gateway(
            fake_worker.url, log_database_url, namespace=namespace, cache_enabled=True
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        statuses = []
        for _ in range(4):  # each about 200 tokens (image, text, max_tokens) of 700 a minute
            response = await _post(client, raw.encode(), **bearer(allowed))
            statuses.append((response.status_code, response.headers.get("x-cache")))
        refused = await _post(client, raw.encode(), **bearer(other_model))
    assert statuses[:3] == [(200, "miss"), (200, "hit"), (200, "hit")]  # the last recalled
    assert statuses[3][0] == 429, statuses
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_permitted"


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    async with running(ImageServer()) as server:
        yield server


async def test_a_body_with_a_remote_image_is_never_recalled(
    fake_worker: FakeWorker, image_server: ImageServer
) -> None:
    body = image_chat_body("what is this?", image_server.url("/image.png"), temperature=0)
    async with (
        run_gateway(
            fake_worker.url,
            remote_images=remote_settings(image_server),
            cache_enabled=True,
            cache_namespace=f"test-recall-{uuid.uuid4().hex[:8]}",
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        outcomes = [(await _post(client, json.dumps(body).encode())) for _ in range(4)]
    assert [r.headers["x-cache"] for r in outcomes] == ["miss", "hit", "hit", "hit"]
    assert image_server.hits["/image.png"] == 4, "what the URL serves may have changed"
