"""Idempotency-Key through an in-process gateway and the scriptable fake worker, for what
the real worker cannot do on cue: fail a generation, hold one until the test lets it
answer, and a Redis that is not there."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.doubles.fake_worker import FakeWorker
from tests.support.metrics import scrape, total
from tests.support.redis_cluster import RedisTarget
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

CHAT = "/v1/chat/completions"
NO_REDIS = "redis://127.0.0.1:19903/0"  # in this suite's port range; nothing listens there


@pytest.fixture
async def gateway(fake_worker: FakeWorker) -> AsyncIterator[str]:
    namespace = f"test-idem-{uuid.uuid4().hex[:8]}"
    settings = {"cache_enabled": True, "cache_namespace": namespace, "idempotency_ttl_s": 120}
    async with run_gateway(fake_worker.url, **settings) as url:
        yield url


def _calls(worker: FakeWorker, text: str) -> int:
    return sum(1 for _, body in worker.requests if body["messages"][-1]["content"] == text)


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return chat_body(text, **{"temperature": 1.0, "max_tokens": 8, **extra})


async def _hang_up_while_generating(
    http: httpx.AsyncClient, url: str, worker: FakeWorker, text: str, headers: dict[str, str]
) -> None:
    """A client that leaves once its request reached the worker."""
    calls = _calls(worker, text)
    request = asyncio.create_task(http.post(url + CHAT, json=_body(text), headers=headers))
    while _calls(worker, text) == calls:
        assert not request.done(), request.result().text
        await asyncio.sleep(0.01)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request


async def test_a_failed_generation_is_not_stored_so_the_retry_generates_again(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    text = f"idem-fails-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    fake_worker.scripts[text] = "fake:status:500"
    failed = await http.post(gateway + CHAT, json=_body(text), headers=headers)
    assert failed.status_code >= 500
    fake_worker.scripts[text] = "fake:say:the second try"
    retry = await http.post(gateway + CHAT, json=_body(text), headers=headers)
    assert retry.status_code == 200
    assert retry.headers["x-cache"] == "miss"  # a generation of its own, under the key
    assert retry.json()["choices"][0]["message"]["content"] == "the second try"
    again = await http.post(gateway + CHAT, json=_body(text), headers=headers)
    assert again.headers["x-cache"] == "idempotent"
    assert again.json()["choices"] == retry.json()["choices"]
    assert _calls(fake_worker, text) == 2


async def test_a_retry_joins_the_generation_its_client_left(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    text = f"idem-join-{uuid.uuid4().hex[:8]}"
    gate = f"g{uuid.uuid4().hex[:8]}"
    fake_worker.scripts[text] = f"fake:gatesay:{gate}:one answer"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    await _hang_up_while_generating(http, gateway, fake_worker, text, headers)
    retry = asyncio.create_task(http.post(gateway + CHAT, json=_body(text), headers=headers))
    await asyncio.sleep(0.3)
    assert not retry.done()
    fake_worker.gate(gate).set()
    answer = await retry
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "idempotent"
    assert answer.json()["choices"][0]["message"]["content"] == "one answer"
    assert _calls(fake_worker, text) == 1


async def test_without_redis_a_retry_on_the_same_replica_still_joins(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    text = f"idem-down-{uuid.uuid4().hex[:8]}"
    gate = f"g{uuid.uuid4().hex[:8]}"
    fake_worker.scripts[text] = f"fake:gatesay:{gate}:one answer"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    async with run_gateway(fake_worker.url, cache_enabled=True, redis_url=NO_REDIS) as url:
        await _hang_up_while_generating(http, url, fake_worker, text, headers)
        retry = asyncio.create_task(http.post(url + CHAT, json=_body(text), headers=headers))
        # Another body under the key cannot be checked without Redis: its own answer, no
        # 409, and never the other body's generation.
        other = await http.post(url + CHAT, json=_body(f"{text}-other"), headers=headers)
        fake_worker.gate(gate).set()
        answer = await retry
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "one answer"
    assert other.status_code == 200
    assert other.json()["choices"][0]["message"]["content"] == "fake answer"
    assert (_calls(fake_worker, text), _calls(fake_worker, f"{text}-other")) == (1, 1)


async def test_keyed_requests_are_counted_apart_from_the_answer_cache(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    """A keyed sampled request is no answer-cache miss: the cache's hit ratio (and its
    alert) must not fall when clients start sending keys."""
    text = f"idem-count-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    before = await scrape(http, gateway)
    for body in (_body(text), _body(text), _body(f"{text}-other")):
        await http.post(gateway + CHAT, json=body, headers=headers)
    after = await scrape(http, gateway)

    def moved(name: str, outcome: str) -> float:
        label = f'outcome="{outcome}"'
        return total(after, name, lambda k: label in k) - total(before, name, lambda k: label in k)

    keyed = "gateway_idempotency_requests_total"
    assert [moved(keyed, o) for o in ("miss", "idempotent", "conflict")] == [1, 1, 1]
    answer_cache = "gateway_cache_requests_total"
    assert total(after, answer_cache) == total(before, answer_cache)


async def test_the_openapi_document_states_the_header_and_the_409(
    gateway: str, http: httpx.AsyncClient
) -> None:
    document = (await http.get(gateway + "/openapi.json")).json()
    for path in (CHAT, "/v1/vqa"):
        operation = document["paths"][path]["post"]
        names = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert "Idempotency-Key" in names
        assert "409" in operation["responses"]


async def test_a_retry_on_another_replica_joins_and_another_body_there_is_a_409(
    fake_worker: FakeWorker, http: httpx.AsyncClient, redis_target: RedisTarget
) -> None:
    """Two gateway replicas on one Redis (then a Redis Cluster): the retry reaches the
    other replica, as behind Nginx, and still joins the first generation."""
    text = f"idem-replicas-{uuid.uuid4().hex[:8]}"
    gate = f"g{uuid.uuid4().hex[:8]}"
    fake_worker.scripts[text] = f"fake:gatesay:{gate}:one answer"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    settings = {
        "cache_enabled": True,
        "cache_namespace": f"test-idem-{uuid.uuid4().hex[:8]}",
        "redis_url": redis_target.url,
        "redis_cluster": redis_target.cluster,
        "idempotency_ttl_s": 120,  # the shared Redis forgets this test's keys soon
    }
    async with (
        run_gateway(fake_worker.url, **settings) as a,
        run_gateway(fake_worker.url, **settings) as b,
    ):
        await _hang_up_while_generating(http, a, fake_worker, text, headers)
        retry = asyncio.create_task(http.post(b + CHAT, json=_body(text), headers=headers))
        other = await http.post(b + CHAT, json=_body(f"{text}-other"), headers=headers)
        await asyncio.sleep(0.3)
        assert not retry.done()
        fake_worker.gate(gate).set()
        answer = await retry
    assert other.status_code == 409
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "idempotent"
    assert answer.json()["choices"][0]["message"]["content"] == "one answer"
    assert (_calls(fake_worker, text), _calls(fake_worker, f"{text}-other")) == (1, 0)


@pytest.mark.parametrize(
    "extra",
    [
        {"logprobs": True},
        {"tools": [{"type": "function", "function": {"name": "price", "parameters": {}}}]},
    ],
    ids=["logprobs", "tools"],
)
async def test_answers_that_cannot_be_kept_refuse_the_header_clearly(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    text = f"idem-shape-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    response = await http.post(gateway + CHAT, json=_body(text, **extra), headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "Idempotency-Key")
    assert "Send the request without it" in error["message"]
    assert _calls(fake_worker, text) == 0
    assert (await http.post(gateway + CHAT, json=_body(text, **extra))).status_code == 200
