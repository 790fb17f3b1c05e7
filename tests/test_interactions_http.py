"""Requests to rows: every inference request through a gateway process leaves exactly one
row in MariaDB with the right fields, for misses, hits, errors and rejected requests."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localstack.processes import LocalProcess, start_gateway
from tests.support.images import data_uri
from tests.support.mariadb import logged_rows
from tests.support.requests import image_chat_body
from tests.support.worker import LOG_DIR, TINY_MODEL_NAME
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def gateway(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[LocalProcess]:
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "GATEWAY_MAX_BODY_BYTES": "200000",
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
    }
    process = start_gateway([worker_url], LOG_DIR, env=env)
    yield process
    process.stop()


def _body(photo_seed: int, **extra: Any) -> dict[str, Any]:
    uri = data_uri(png_bytes(40, 40, seed=photo_seed))
    fields = {"max_tokens": 5, "temperature": 0, **extra}
    return image_chat_body("Is it leather?", uri, **fields)


async def _send(url: str, request_id: str, **kwargs: Any) -> httpx.Response:
    headers = {
        "X-Request-ID": request_id,
        "User-Agent": "shop-app/2.1",
        **kwargs.pop("headers", {}),
    }
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(url + "/v1/chat/completions", headers=headers, **kwargs)


async def test_miss_and_hit_rows_carry_the_interaction(
    gateway: LocalProcess, log_database_url: str, worker_url: str
) -> None:
    ids = [f"log-{uuid.uuid4().hex}" for _ in range(2)]
    miss = await _send(gateway.url, ids[0], json=_body(1))
    hit = await _send(gateway.url, ids[1], json=_body(1))
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    (miss_row,) = await asyncio.to_thread(logged_rows, log_database_url, ids[0])
    (hit_row,) = await asyncio.to_thread(logged_rows, log_database_url, ids[1])
    photo_digest = hashlib.sha256(png_bytes(40, 40, seed=1)).hexdigest()
    for row, cache in ((miss_row, "miss"), (hit_row, "hit")):
        assert row["status_code"] == 200
        assert row["cache"] == cache
        assert row["endpoint"] == "/v1/chat/completions"
        assert row["shape"] == "chat"
        assert row["model"] == TINY_MODEL_NAME
        assert row["prompt"] == "Is it leather?"
        assert row["user_agent"] == "shop-app/2.1"
        assert row["client_ip"] == "127.0.0.0"  # anonymised to /24 by default
        assert row["images"][0]["digest"] == photo_digest
        assert (row["images"][0]["width"], row["images"][0]["height"]) == (40, 40)
        assert row["answer"] == miss.json()["choices"][0]["message"]["content"]
        assert row["completion_tokens"] == miss.json()["usage"]["completion_tokens"]
        assert row["latency_ms"] >= 0
        assert row["error_code"] is None
    assert miss_row["worker_id"] == worker_url
    assert hit_row["worker_id"] is None


async def test_streamed_request_row_has_answer_and_ttft(
    gateway: LocalProcess, log_database_url: str
) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=_body(2, stream=True, temperature=0.7),
            headers={"X-Request-ID": request_id},
        ) as response,
    ):
        text_parts = [line async for line in response.aiter_lines()]
    assert text_parts[-2] == "data: [DONE]" or text_parts[-1] == "data: [DONE]"
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert row["stream"] == 1
    assert row["cache"] == "bypass"  # sampled without a seed: not cacheable
    assert row["ttft_ms"] is not None
    assert row["ttft_ms"] > 0
    assert row["completion_tokens"] >= 1
    assert row["answer"] is not None


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400,
         "invalid_json"),
        ({"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ({"json": {**_body(3), "model": "nope"}}, 404, "model_not_found"),
        ({"json": {**_body(3), "temperature": 9}}, 400, "invalid_temperature"),
        ({"content": b"{" + b" " * 300_000 + b"}",
          "headers": {"Content-Type": "application/json"}}, 413, "body_too_large"),
    ],
)  # fmt: skip
async def test_rejected_requests_leave_one_row_with_their_error(
    gateway: LocalProcess,
    log_database_url: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    response = await _send(gateway.url, request_id, **kwargs)
    assert response.status_code == status
    rows = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert len(rows) == 1
    assert rows[0]["status_code"] == status
    assert rows[0]["error_code"] == code
    assert rows[0]["answer"] is None


async def test_a_reused_request_id_still_gets_one_row_per_request(
    gateway: LocalProcess, log_database_url: str
) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    for _ in range(3):
        await _send(gateway.url, request_id, json=_body(4))
    await asyncio.sleep(0.5)
    rows = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert len(rows) == 3
    assert sorted(r["cache"] for r in rows) == ["hit", "hit", "miss"]
