"""The answer cache and coalescing end to end: gateway processes, real Redis, a real worker.

Worker requests are counted from vLLM's own metrics, so "the worker was not called"
is observed, not assumed. Redis drills run on a private redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from localstack.processes import LocalProcess, start_gateway
from tests.support.images import data_uri
from tests.support.redis_server import PrivateRedis
from tests.support.requests import image_chat_body, vqa_body
from tests.support.sse import read_stream
from tests.support.worker import LOG_DIR, finished_requests
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    return {**base, "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}", **extra}


@pytest.fixture(scope="module")
def gateways(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[list[str]]:
    """Two replicas sharing one cache namespace on the machine's Redis."""
    env = _env(gateway_process_env)
    processes: list[LocalProcess] = []
    try:
        processes += [start_gateway([worker_url], LOG_DIR, env=env) for _ in range(2)]
        yield [p.url for p in processes]
    finally:
        for process in processes:
            process.stop()


def _photo(seed: int, size: int = 48) -> bytes:
    return png_bytes(size, size, seed=seed)


def _chat(image: bytes, mime: str = "image/png", **extra: Any) -> dict[str, Any]:
    fields = {"max_tokens": 6, "temperature": 0, **extra}
    return image_chat_body("Is this bag real leather?", data_uri(image, mime), **fields)


async def _post(
    url: str, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.post(url + path, json=body, headers=headers)


async def test_miss_then_hit_with_a_fresh_id_and_no_worker_call(
    gateways: list[str], worker_url: str
) -> None:
    body = _chat(_photo(1))
    first = await _post(gateways[0], body)
    before = await finished_requests(worker_url)
    second = await _post(gateways[1], body)  # the other replica: the cache is shared
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert await finished_requests(worker_url) == before
    a, b = first.json(), second.json()
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
    assert b["usage"] == {k: a["usage"][k] for k in ("prompt_tokens", "completion_tokens",
                                                      "total_tokens")}  # fmt: skip
    assert b["id"] != a["id"]


async def test_sampled_requests_and_cache_control_bypass(
    gateways: list[str], worker_url: str
) -> None:
    sampled = await _post(gateways[0], _chat(_photo(2), temperature=0.8))
    assert sampled.headers["x-cache"] == "bypass"
    body = _chat(_photo(3))
    no_store = await _post(gateways[0], body, **{"Cache-Control": "no-store"})
    assert no_store.headers["x-cache"] == "miss"
    after_no_store = await _post(gateways[0], body)
    assert after_no_store.headers["x-cache"] == "miss", "no-store must not have stored"
    before = await finished_requests(worker_url)
    no_cache = await _post(gateways[0], body, **{"Cache-Control": "no-cache"})
    assert no_cache.headers["x-cache"] == "bypass"
    assert await finished_requests(worker_url) == before + 1, "no-cache must call the worker"
    seeded = _chat(_photo(3), temperature=0.8, seed=42)
    assert (await _post(gateways[0], seeded)).headers["x-cache"] == "miss"
    assert (await _post(gateways[1], seeded)).headers["x-cache"] == "hit"


async def test_same_photo_in_another_encoding_is_a_hit(gateways: list[str]) -> None:
    photo = _photo(4)
    bare = base64.b64encode(photo).decode()
    simple = vqa_body(bare, "What brand is it?", max_tokens=6)
    assert (await _post(gateways[0], simple, "/v1/vqa")).headers["x-cache"] == "miss"
    # The same bytes as a data URI, declared JPEG, on the other endpoint: same key.
    as_uri = {**simple, "image": f"data:image/jpeg;base64,{bare}"}
    hit = await _post(gateways[1], as_uri, "/v1/chat/completions")
    assert hit.headers["x-cache"] == "hit"
    assert set(hit.json()) == {"text"}


async def test_one_changed_pixel_is_a_different_photo(gateways: list[str]) -> None:
    base = Image.new("RGB", (40, 40), (120, 80, 40))
    edited = base.copy()
    edited.putpixel((17, 23), (121, 80, 40))
    encoded = []
    for image in (base, edited):
        out = io.BytesIO()
        image.save(out, "PNG")
        encoded.append(out.getvalue())
    assert (await _post(gateways[0], _chat(encoded[0]))).headers["x-cache"] == "miss"
    assert (await _post(gateways[0], _chat(encoded[0]))).headers["x-cache"] == "hit"
    assert (await _post(gateways[0], _chat(encoded[1]))).headers["x-cache"] == "miss"


async def test_different_sampling_parameters_miss(gateways: list[str]) -> None:
    body = _chat(_photo(6))
    assert (await _post(gateways[0], body)).headers["x-cache"] == "miss"
    assert (await _post(gateways[0], {**body, "max_tokens": 7})).headers["x-cache"] == "miss"
    assert (await _post(gateways[0], {**body, "top_p": 0.5})).headers["x-cache"] == "miss"
    assert (await _post(gateways[0], body)).headers["x-cache"] == "hit"


async def _stream(url: str, body: dict[str, Any]) -> tuple[str, list[str]]:
    stream = await read_stream(url, body)
    return stream.headers["x-cache"], stream.events


async def test_streamed_hit_is_valid_sse_with_usage(gateways: list[str]) -> None:
    body = _chat(_photo(7), stream=True, stream_options={"include_usage": True})
    first_cache, first = await _stream(gateways[0], body)
    second_cache, second = await _stream(gateways[1], body)
    assert (first_cache, second_cache) == ("miss", "hit")
    for events in (first, second):
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[-1]["usage"]["completion_tokens"] >= 1

    def text(events: list[str]) -> str:
        chunks = [json.loads(e) for e in events[:-1]]
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )

    assert text(second) == text(first)
    # Without include_usage the client gets no usage event, although the gateway asked.
    _, plain = await _stream(gateways[1], {**body, "stream_options": None} | {"stream": True})
    assert not any('"usage"' in e and '"choices":[]' in e for e in plain)


async def test_fifty_identical_requests_over_two_replicas_cost_one_generation(
    gateways: list[str], worker_url: str
) -> None:
    body = _chat(_photo(8), max_tokens=24, ignore_eos=True)  # long enough to overlap
    before = await finished_requests(worker_url)
    responses = await asyncio.gather(*[_post(gateways[i % 2], body) for i in range(50)])
    assert [r.status_code for r in responses] == [200] * 50
    assert await finished_requests(worker_url) == before + 1
    outcomes = sorted(r.headers["x-cache"] for r in responses)
    assert outcomes.count("miss") == 1
    assert set(outcomes) <= {"miss", "coalesced", "hit"}
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1


# --- Redis failure drills (private Redis) ------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def _breaker_state(gateway_url: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gateway_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("gateway_cache_breaker_state "):
            return float(line.split()[1])
    return 0.0


async def _load(url: str, seconds: float, statuses: list[int]) -> None:
    """Cacheable requests over a few photos, back to back, for `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        i = 0
        while loop.time() < deadline:
            response = await client.post(
                url + "/v1/chat/completions", json=_chat(_photo(100 + i % 3), max_tokens=2)
            )
            statuses.append(response.status_code)
            i += 1


@pytest.mark.parametrize("failure", ["kill", "freeze"])
async def test_redis_failure_under_load_costs_no_5xx_and_opens_the_breaker(
    worker_url: str,
    gateway_process_env: dict[str, str],
    private_redis: PrivateRedis,
    failure: str,
) -> None:
    # The in-process cache off: it would answer these few photos without asking Redis
    # (tests/test_cache_local.py); this drill is about the Redis path.
    env = _env(gateway_process_env, GATEWAY_REDIS_URL=private_redis.url,
               GATEWAY_REDIS_BREAKER_OPEN_S="1", GATEWAY_CACHE_LOCAL_MAX_BYTES="0")  # fmt: skip
    gateway = start_gateway([worker_url], LOG_DIR, env=env)
    try:
        warm = _chat(_photo(100), max_tokens=2)
        await _post(gateway.url, warm)
        assert (await _post(gateway.url, warm)).headers["x-cache"] == "hit"
        statuses: list[int] = []
        load = [asyncio.create_task(_load(gateway.url, 4.0, statuses)) for _ in range(4)]
        await asyncio.sleep(1.0)
        if failure == "kill":
            private_redis.kill()
        else:
            private_redis.freeze()
        await asyncio.sleep(1.0)
        assert await _breaker_state(gateway.url) in (1.0, 2.0), "the breaker did not open"
        await asyncio.gather(*load)
        assert statuses, "no load was sent"
        assert [s for s in statuses if s >= 500] == []
        assert (await _post(gateway.url, warm)).headers["x-cache"] == "bypass"

        # Redis returns: the breaker closes by itself and hits resume.
        if failure == "kill":
            private_redis.start()
        else:
            private_redis.thaw()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        outcomes = []
        while loop.time() < deadline:
            outcomes.append((await _post(gateway.url, warm)).headers["x-cache"])
            if outcomes[-1] == "hit":
                break
            await asyncio.sleep(0.3)
        assert outcomes[-1] == "hit", outcomes
        assert await _breaker_state(gateway.url) == 0.0
    finally:
        gateway.stop()
