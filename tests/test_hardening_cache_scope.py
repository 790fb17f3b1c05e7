"""Issue 15, section 3: a key may keep its cache and coalescing to itself, so X-Cache never
tells it (or anyone else) what another key asked. The shared cache stays the default."""

from __future__ import annotations

import uuid

import httpx

from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.requests import chat_body

CHAT = "/v1/chat/completions"


async def test_a_key_with_its_own_cache_neither_sees_nor_feeds_the_shared_one(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    first, second = create_key(log_database_url), create_key(log_database_url)
    private = create_key(log_database_url, "--cache", "key")
    other_private = create_key(log_database_url, "--cache", "key")
    body = chat_body(f"is this bag real leather? {uuid.uuid4().hex}", temperature=0)

    async def ask(key: str) -> str:
        response = await http.post(url + CHAT, json=body, headers=bearer(key))
        assert response.status_code == 200, response.text
        return response.headers["x-cache"]

    async with keyed_gateway(fake_worker.url, log_database_url, cache_enabled=True) as url:
        before = len(fake_worker.requests)
        assert await ask(first) == "miss"
        assert await ask(second) == "hit"  # shared by default
        assert await ask(private) == "miss"  # another key's answer is not its to see
        assert await ask(private) == "hit"  # its own cache works
        assert await ask(other_private) == "miss"
        assert len(fake_worker.requests) - before == 3
