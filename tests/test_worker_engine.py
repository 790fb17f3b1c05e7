"""The real vLLM CPU engine serving the tiny Qwen3-VL: no fakes.

One worker per test session (tests/conftest.py). Its answers are noise (random
weights), so the tests assert the serving behaviour, never the text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.support.requests import image_chat_body
from tests.support.sse import assert_arrived_incrementally, read_stream
from tests.support.worker import TINY_MODEL_NAME, metric_total
from worker.sample_image import png_data_uri

pytestmark = pytest.mark.engine


def _chat(images: list[str], text: str, **extra: Any) -> dict[str, Any]:
    return image_chat_body(text, *images, **{"max_tokens": 8, **extra})


async def test_chat_completion_with_a_base64_png_returns_choices_and_usage(
    worker_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=worker_url, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat([png_data_uri(64, 48)], "Is this bag real leather?")
        )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == TINY_MODEL_NAME
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_image_tokens_follow_qwen3_vl_arithmetic(worker_url: str) -> None:
    """640x480 is (640/32)*(480/32) = 300 image tokens, plus vision start and end."""
    async with httpx.AsyncClient(base_url=worker_url, timeout=60) as client:
        with_image = await client.post(
            "/v1/chat/completions", json=_chat([png_data_uri(640, 480)], "What brand is it?")
        )
        text_only = await client.post(
            "/v1/chat/completions",
            json={
                "model": TINY_MODEL_NAME,
                "messages": [{"role": "user", "content": "What brand is it?"}],
                "max_tokens": 1,
            },
        )
    assert with_image.status_code == text_only.status_code == 200
    added = with_image.json()["usage"]["prompt_tokens"] - text_only.json()["usage"]["prompt_tokens"]
    assert added == 300 + 2


async def test_streaming_arrives_incrementally_and_ends_with_done(worker_url: str) -> None:
    body = _chat(
        [png_data_uri(96, 96, seed=3)],
        "Describe this jacket.",
        stream=True,
        max_tokens=48,
        ignore_eos=True,  # random weights could stop at once; we need a long stream
        stream_options={"include_usage": True},
    )
    stream = await read_stream(worker_url, body)
    events = stream.events
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    # Byte-level tokens that end inside a UTF-8 character are held back and sent
    # with the next one, so there are fewer text chunks than tokens.
    assert len(deltas) >= 20
    assert chunks[-1]["usage"]["completion_tokens"] == 48
    assert_arrived_incrementally(stream.arrivals)


async def test_concurrent_image_requests_are_batched_by_the_engine(worker_url: str) -> None:
    """16+ requests at once all succeed and the engine runs several together:
    continuous batching, observed in vLLM's own gauge rather than assumed."""
    concurrency = 20
    peak_running = 0.0
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=worker_url, timeout=120) as client:

        async def watch_running() -> None:
            nonlocal peak_running
            while not stop.is_set():
                metrics = (await client.get("/metrics")).text
                peak_running = max(peak_running, metric_total(metrics, "vllm:num_requests_running"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_running())
        requests = [
            client.post(
                "/v1/chat/completions",
                json=_chat(
                    [png_data_uri(128, 96, seed=100 + i)],
                    f"Question {i}: is this a good gift for my mother?",
                    max_tokens=32,
                    ignore_eos=True,
                ),
            )
            for i in range(concurrency)
        ]
        responses = await asyncio.gather(*requests)
        stop.set()
        await watcher

    assert [r.status_code for r in responses] == [200] * concurrency
    assert all(r.json()["usage"]["completion_tokens"] == 32 for r in responses)
    assert peak_running > 1, "the engine never ran two requests at once"


async def test_two_images_within_the_limit_work(worker_url: str) -> None:
    async with httpx.AsyncClient(base_url=worker_url, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=_chat(
                [png_data_uri(64, 64, seed=1), png_data_uri(64, 64, seed=2)],
                "Which of these two bags is leather?",
            ),
        )
    assert response.status_code == 200
    assert response.json()["choices"]


async def test_images_over_the_limit_are_refused(worker_url: str) -> None:
    async with httpx.AsyncClient(base_url=worker_url, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=_chat([png_data_uri(32, 32, seed=s) for s in range(3)], "Compare these."),
        )
    assert response.status_code == 400
    assert "image" in response.json()["error"]["message"].lower()
