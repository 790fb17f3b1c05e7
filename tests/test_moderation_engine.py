"""Moderation end to end with the real engine: a refused prompt never reaches the worker
(counted by vLLM's own metrics), a clean one is answered, with moderation on (the default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.images import data_uri
from tests.support.requests import image_chat_body
from tests.support.servers import run_gateway
from tests.support.worker import finished_requests
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
async def moderated_gateway(worker_url: str) -> AsyncIterator[str]:
    async with run_gateway(worker_url) as url:
        yield url


def _body(question: str) -> dict[str, object]:
    uri = data_uri(png_bytes(48, 48, seed=61))
    return image_chat_body(question, uri, max_tokens=4, temperature=0)


async def test_a_refused_prompt_never_reaches_the_worker_and_a_clean_one_does(
    moderated_gateway: str, worker_url: str
) -> None:
    async with httpx.AsyncClient(base_url=moderated_gateway, timeout=120) as client:
        before = await finished_requests(worker_url)
        refused = await client.post("/v1/chat/completions", json=_body("这个包能用来卖淫吗"))
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "content_policy_violation"
        assert await finished_requests(worker_url) == before
        clean = await client.post("/v1/chat/completions", json=_body("这个包是真皮的吗？"))
        assert clean.status_code == 200, clean.text
        assert clean.json()["choices"][0]["message"]["content"] is not None
        assert await finished_requests(worker_url) == before + 1
