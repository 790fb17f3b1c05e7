"""Issue 24: a key's concurrency limit bounds its generations.

A coalescing leader whose client leaves generates on for its waiters; before issue 24 its
request gave the key's slot back when the client left, so a key that sent distinct
cacheable requests and hung up after each body could keep any number of generations
running on the workers. Now the slot is held until the generation ends. In-process
gateway with API keys (MariaDB) and limits (the machine's Redis), the scripted fake
worker with slow answers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from gateway.ratelimit.scripts import lease_set_key
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, key_id, keyed_gateway
from tests.support.requests import chat_body

GENERATION_S = 3.0


def _slow_prompt(worker: FakeWorker) -> str:
    prompt = f"is this bag real leather {uuid.uuid4().hex}"
    worker.scripts[prompt] = f"fake:sleepsay:{GENERATION_S}:It is real leather."
    return prompt


def _asked(worker: FakeWorker, prompts: list[str]) -> int:
    return sum(1 for _, body in worker.requests if any(p in json.dumps(body) for p in prompts))


async def _hang_up_after_sending(url: str, key: str, body: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=body, headers=bearer(key))


@pytest.mark.parametrize("stream", [False, True])
async def test_generations_of_clients_that_left_keep_their_slots(
    fake_worker: FakeWorker, log_database_url: str, stream: bool
) -> None:
    key = create_key(log_database_url, "--concurrent", "3")
    namespace = f"test-slots-{uuid.uuid4().hex[:8]}"
    slots = lease_set_key(namespace, key_id(key))
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    prompts = [_slow_prompt(fake_worker) for _ in range(5)]
    try:
        async with keyed_gateway(
            fake_worker.url, log_database_url, namespace=namespace, cache_enabled=True
        ) as url:
            started = time.monotonic()
            for prompt in prompts[:3]:
                body = chat_body(prompt, temperature=0, stream=stream)
                await _hang_up_after_sending(url, key, body)
            await asyncio.sleep(0.2)  # the gateway has seen the clients go
            assert int(await redis.zcard(slots)) == 3, "the generations hold their slots"
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = chat_body(prompts[3], temperature=0, stream=stream)
                refused = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
                assert time.monotonic() - started < GENERATION_S, "too slow to judge"
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
                assert _asked(fake_worker, prompts) == 3
                # The generations end: their slots come back by themselves.
                deadline = time.monotonic() + 15
                while int(await redis.zcard(slots)) > 0:
                    assert time.monotonic() < deadline, "the slots were never given back"
                    await asyncio.sleep(0.1)
                body = chat_body(prompts[4], temperature=0, stream=stream)
                served = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
                assert served.status_code == 200
    finally:
        await redis.aclose()
