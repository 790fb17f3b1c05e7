"""Moderation end to end with the real engine: a refused prompt never reaches the worker
(counted by vLLM's own metrics), a clean one is answered, with moderation on (the default)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import TINY_MODEL_NAME
from tests.gateway_fixtures import run_gateway
from tests.worker_metrics import finished_requests
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine
pytest_plugins = ["tests.gateway_fixtures"]


@pytest.fixture(scope="module")
async def moderated_gateway(worker_url: str) -> AsyncIterator[str]:
    async with run_gateway(worker_url) as url:
        yield url


def _body(question: str) -> dict[str, object]:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(48, 48, seed=61)).decode()
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": question}]
    return {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
    }


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
