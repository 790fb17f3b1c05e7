"""Near-duplicate photos through the stack `make up` runs: gateway processes with API keys,
the machine's Redis and MariaDB, and the real vLLM engine (cpu-tiny; its answers are
noise, but greedy noise: the same request gets the same text). Worker requests are
counted from vLLM's own metrics, so "the worker was not called" is observed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from loadtest.bench.near_corpus import draw_product
from localstack.processes import LocalProcess, start_gateway
from tests.support.auth import bearer, create_key
from tests.support.near import BAG, body, indexed, jpeg, png
from tests.support.worker import LOG_DIR, finished_requests

pytestmark = pytest.mark.engine


def _gateway(worker_url: str, env: dict[str, str], near: bool) -> LocalProcess:
    return start_gateway(
        [worker_url],
        LOG_DIR,
        env={
            **env,
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_CACHE_NAMESPACE": f"t-near-{uuid.uuid4().hex[:8]}",
            "GATEWAY_CACHE_NEAR_ENABLED": str(near).lower(),
        },
    )


@pytest.fixture(scope="module")
def stacks(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A gateway with the feature on, and one with it off (the default)."""
    on = _gateway(worker_url, gateway_process_env, near=True)
    try:
        off = _gateway(worker_url, gateway_process_env, near=False)
        try:
            yield on.url, off.url
        finally:
            off.stop()
    finally:
        on.stop()


async def _ask(url: str, key: str, payload: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{url}/v1/chat/completions", json=payload, headers=bearer(key)
        )
    assert response.status_code == 200, response.text
    return response


async def test_photo_then_its_re_encoding_then_a_recoloured_product(
    stacks: tuple[str, str], worker_url: str, log_database_url: str
) -> None:
    on, off = stacks
    key = create_key(log_database_url, "--cache", "near", name="shop")
    photo = draw_product(replace(BAG, seed=21, label="KAITO"))
    first = await _ask(on, key, body(jpeg(photo)))
    assert first.headers["x-cache"] == "miss"
    async with httpx.AsyncClient(base_url=on, timeout=10) as client:
        await indexed(client, 1)

    before = await finished_requests(worker_url)
    again = await _ask(on, key, body(jpeg(photo, quality=70, scale=0.6)))
    assert again.headers["x-cache"] == "similar"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert await finished_requests(worker_url) == before, "a near match never reaches vLLM"

    recoloured = draw_product(replace(BAG, seed=21, label="KAITO", colour=(30, 120, 70)))
    assert (await _ask(on, key, body(jpeg(recoloured)))).headers["x-cache"] == "miss"
    other = body(jpeg(photo, quality=70, scale=0.6), "What brand is this?")
    assert (await _ask(on, key, other)).headers["x-cache"] == "miss"

    # The same two requests where the deployment left the feature off.
    assert (await _ask(off, key, body(jpeg(photo)))).headers["x-cache"] == "miss"
    assert (await _ask(off, key, body(png(photo)))).headers["x-cache"] == "miss"
