"""Issue 24: what each replica does for the cache in its own memory.

* With Redis down, identical requests still share one generation per replica
  (in-process single-flight), instead of one generation per request.

In-process gateways in front of the scripted fake worker (it counts what it is asked);
Redis is the machine's, or an address where nothing listens ("Redis is down").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx

from localstack.processes import free_port
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway


def _scripted(worker: FakeWorker, command: str) -> str:
    """A fresh prompt the fake worker answers by ``command``."""
    prompt = f"is this bag real leather {uuid.uuid4().hex}"
    worker.scripts[prompt] = command
    return prompt


def _content(response: httpx.Response) -> str:
    """The answer's text, from a JSON completion or from its stream's events."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return str(response.json()["choices"][0]["message"]["content"])
    parts = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", ()):
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def _asked(worker: FakeWorker, text: str) -> int:
    return sum(json.dumps(body).count(text) for _, body in worker.requests)


async def _post(
    client: httpx.AsyncClient, body: dict[str, Any], **headers: str
) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_with_redis_down_identical_requests_share_one_generation(
    fake_worker: FakeWorker,
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with (
        run_gateway(
            fake_worker.url,
            cache_enabled=True,
            redis_url=dead_redis,
            cache_namespace=f"test-local-{uuid.uuid4().hex[:8]}",
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        for stream in (False, True):
            prompt = _scripted(fake_worker, "fake:sleepsay:0.5:It is real leather.")
            body = chat_body(prompt, temperature=0, stream=stream)
            responses = await asyncio.gather(*(_post(client, body) for _ in range(10)))
            assert _asked(fake_worker, prompt) == 1, f"stream={stream}"
            outcomes = sorted(r.headers["x-cache"] for r in responses)
            assert outcomes == ["bypass"] + ["coalesced"] * 9, outcomes
            assert {_content(r) for r in responses} == {"It is real leather."}
