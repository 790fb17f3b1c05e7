"""The whole path through real processes: Nginx -> 2 gateway replicas -> a real vLLM CPU worker.

These start the same commands `make up` runs (localstack/processes.py), on free
ports of their own, and talk HTTP to Nginx as a client would.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from localstack.processes import LocalProcess, start_gateway, start_nginx
from tests.support.requests import image_chat_body, vqa_body
from tests.support.sse import assert_arrived_incrementally, read_stream
from tests.support.worker import LOG_DIR, TINY_MODEL_NAME, finished_requests
from worker.sample_image import png_bytes, png_data_uri

pytestmark = pytest.mark.engine

MAX_BODY = 2 * 1024 * 1024


@dataclass(frozen=True)
class Stack:
    url: str  # Nginx
    gateway_urls: list[str]


@pytest.fixture(scope="module")
def stack_processes(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[Stack]:
    """Nginx in front of two gateway replicas that share the session worker."""
    processes: list[LocalProcess] = []
    env = {**gateway_process_env, "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)}
    try:
        gateways = [start_gateway([worker_url], LOG_DIR, env=env) for _ in range(2)]
        processes += gateways
        upstreams = [f"127.0.0.1:{g.port}" for g in gateways]
        nginx = start_nginx(upstreams, LOG_DIR, max_body_bytes=MAX_BODY)
        processes.append(nginx)
        yield Stack(nginx.url, [g.url for g in gateways])
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture
def stack(stack_processes: Stack) -> str:
    return stack_processes.url


def _chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    fields = {"max_tokens": 8, "stream": stream, **extra}
    return image_chat_body("Is this bag real leather?", png_data_uri(96, 64, seed=11), **fields)


async def test_chat_completion_through_nginx(stack: str) -> None:
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat(), headers={"X-Request-ID": "trace-abc-123"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-abc-123"
    body = response.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] > 0


async def test_a_request_id_is_generated_when_absent(stack: str) -> None:
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        first = await client.post("/v1/chat/completions", json=_chat())
        second = await client.post("/v1/chat/completions", json=_chat())
    ids = {first.headers.get("x-request-id"), second.headers.get("x-request-id")}
    assert None not in ids
    assert len(ids) == 2


@pytest.mark.parametrize("path", ["/v1/vqa", "/v1/chat/completions"])
async def test_simple_shape_on_both_endpoints(stack: str, path: str) -> None:
    image = base64.b64encode(png_bytes(64, 64, seed=5)).decode()
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        response = await client.post(path, json=vqa_body(image, "What brand is it?", max_tokens=8))
    assert response.status_code == 200
    assert set(response.json()) == {"text"}
    assert isinstance(response.json()["text"], str)


async def test_streaming_through_nginx_arrives_incrementally(stack: str) -> None:
    body = _chat(
        stream=True, max_tokens=48, ignore_eos=True, stream_options={"include_usage": True}
    )
    stream = await read_stream(stack, body)
    events = stream.events
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 48
    assert_arrived_incrementally(stream.arrivals)


async def test_streaming_without_worker_only_fields(stack: str) -> None:
    """Chunks arrive spread out even when the answer may stop early."""
    body = _chat(stream=True, max_tokens=64, stream_options={"include_usage": True})
    events: list[str] = []
    async with (
        httpx.AsyncClient(base_url=stack, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] >= 1


async def test_oversized_body_is_refused_by_nginx_in_our_error_shape(
    stack: str, worker_url: str
) -> None:
    before = await finished_requests(worker_url)
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (MAX_BODY + 10) + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert await finished_requests(worker_url) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (json.dumps({"model": TINY_MODEL_NAME}).encode(), 400, "missing_messages"),
        (json.dumps({**_chat(), "model": "gpt-4"}).encode(), 404, "model_not_found"),
        (json.dumps({**_chat(), "temperature": 3}).encode(), 400, "invalid_temperature"),
        (json.dumps({**_chat(), "max_tokens": 0}).encode(), 400, "invalid_max_tokens"),
    ],
)
async def test_bad_inputs_get_their_4xx_and_never_reach_the_worker(
    stack: str, worker_url: str, body: bytes, status: int, code: str
) -> None:
    before = await finished_requests(worker_url)
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert await finished_requests(worker_url) == before


async def test_readyz_and_models_through_nginx(stack: str) -> None:
    async with httpx.AsyncClient(base_url=stack, timeout=30) as client:
        ready = await client.get("/readyz")
        models = await client.get("/v1/models")
    assert ready.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [TINY_MODEL_NAME]


async def test_official_openai_client_plain_and_streamed(stack: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack}/v1", api_key="unused", max_retries=0)
    messages: Any = _chat()["messages"]
    try:
        completion = await client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=messages, max_tokens=8
        )
        assert completion.choices[0].message.role == "assistant"
        assert completion.usage is not None
        assert completion.usage.completion_tokens >= 1
        stream = await client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=messages, max_tokens=8, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert chunks[0].object == "chat.completion.chunk"
    finally:
        await client.close()


async def _chat_requests_served(gateway_url: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gateway_url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{") and 'route="/v1/chat/completions"' in line
    )


async def test_concurrent_requests_spread_over_both_replicas(stack_processes: Stack) -> None:
    before = [await _chat_requests_served(url) for url in stack_processes.gateway_urls]
    async with httpx.AsyncClient(base_url=stack_processes.url, timeout=120) as client:
        responses = await asyncio.gather(
            *[client.post("/v1/chat/completions", json=_chat()) for _ in range(12)]
        )
    assert [r.status_code for r in responses] == [200] * 12
    after = [await _chat_requests_served(url) for url in stack_processes.gateway_urls]
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(served) == 12
    assert min(served) >= 2, f"least_conn should use both replicas: {served}"
