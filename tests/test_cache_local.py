"""Issue 24: what each replica does for the cache in its own memory.

* With Redis down, identical requests still share one generation per replica
  (in-process single-flight), instead of one generation per request.
* Hot answers are kept in the replica's memory (gateway/cache/local.py): a hit there costs
  no Redis round trip, and is moderated, logged, limited and counted like any hit; the
  local copy honours no-cache and no-store, lives a short TTL, is bounded in bytes, and
  goes when the workers' checkpoint changes.

In-process gateways in front of the scripted fake worker (it counts what it is asked);
Redis is the machine's, or an address where nothing listens ("Redis is down").
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text

from gateway.answers import CachedAnswer
from gateway.cache.local import LocalAnswers
from gateway.cache.stage import CacheStage
from gateway.cache.store import CacheDirectives
from gateway.config import Settings
from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.metrics import Metrics
from gateway.validation.prepare import PreparedRequest
from localstack.processes import free_port
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.metrics import total
from tests.support.redis_server import PrivateRedis
from tests.support.requests import MODEL, chat_body
from tests.support.servers import run_gateway

ANSWER = CachedAnswer("It is real leather.", "stop", 30, 5)


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


async def _post(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
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


# --- the in-process answer cache ------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# What this test's own INFO call costs: its connection's handshake and the INFO itself.
_OUR_OWN = frozenset({"cmdstat_info", "cmdstat_hello", "cmdstat_client|setinfo"})


async def _redis_commands(url: str) -> int:
    """Commands the Redis server has run so far (the test's own left out)."""
    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(v["calls"]) for k, v in stats.items() if k not in _OUR_OWN)


def _read_row(database_url: str, request_id: str) -> dict[str, Any]:
    engine = create_sync_engine(database_url)
    query = text(
        "SELECT cache, moderation, answer, status_code FROM interactions"
        " WHERE request_id LIKE :prefix"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                rows = [
                    dict(r._mapping) for r in conn.execute(query, {"prefix": f"{request_id}.%"})
                ]
            if rows or time.monotonic() > deadline:
                assert len(rows) == 1, rows
                return rows[0]
            time.sleep(0.05)
    finally:
        engine.dispose()


@pytest.fixture
async def local_gateway(
    fake_worker: FakeWorker,
    private_redis: PrivateRedis,
    log_database_url: str,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url),
        flush_interval_s=0.05,
        spool_path=tmp_path / "spool.jsonl",
    )
    async with (
        run_gateway(
            fake_worker.url,
            cache_enabled=True,
            redis_url=private_redis.url,
            cache_namespace="local",
            cache_local_ttl_s=1.0,
            redis_breaker_open_s=0.3,
            log=log,
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def test_a_hot_hit_costs_no_redis_round_trip_and_is_still_moderated_and_logged(
    local_gateway: httpx.AsyncClient,
    fake_worker: FakeWorker,
    private_redis: PrivateRedis,
    log_database_url: str,
) -> None:
    prompt = _scripted(fake_worker, "fake:say:It is real leather.")
    body = chat_body(prompt, temperature=0)
    assert (await _post(local_gateway, body)).headers["x-cache"] == "miss"
    before = await _redis_commands(private_redis.url)
    request_ids = [f"local-{uuid.uuid4().hex}" for _ in range(20)]
    for request_id in request_ids:
        hit = await _post(local_gateway, body, **{"X-Request-ID": request_id})
        assert hit.headers["x-cache"] == "hit"
        assert _content(hit) == "It is real leather."
    assert await _redis_commands(private_redis.url) == before, "a hot hit asked Redis"
    assert _asked(fake_worker, prompt) == 1
    metrics = (await local_gateway.get("/metrics")).text
    samples = _samples(metrics)
    assert total(samples, "gateway_cache_local_lookups_total", lambda k: "hit" in k) == 20
    assert total(samples, "gateway_cache_requests_total", lambda k: '"hit"' in k) == 20
    checked = total(samples, "gateway_moderation_decisions_total", lambda k: 'stage="answer"' in k)
    assert checked == 21, "every hit's answer is checked before it is served"
    row = await asyncio.to_thread(_read_row, log_database_url, request_ids[-1])
    assert (row["cache"], row["moderation"], row["status_code"]) == ("hit", "pass", 200)
    assert row["answer"] == "It is real leather."


async def test_the_local_copy_honours_cache_control_and_its_ttl(
    local_gateway: httpx.AsyncClient, fake_worker: FakeWorker, private_redis: PrivateRedis
) -> None:
    prompt = _scripted(fake_worker, "fake:say:It is real leather.")
    body = chat_body(prompt, temperature=0)
    no_store = await _post(local_gateway, body, **{"Cache-Control": "no-store"})
    assert no_store.headers["x-cache"] == "miss"
    private_redis.freeze()  # only a local copy could answer now
    try:
        refused = await _post(local_gateway, body)
        assert refused.headers["x-cache"] == "bypass", "no-store was kept in memory"
    finally:
        private_redis.thaw()
    assert _asked(fake_worker, prompt) == 2
    stored = _scripted(fake_worker, "fake:say:A fine bag.")
    stored_body = chat_body(stored, temperature=0)
    await _wait_for_redis(local_gateway, stored_body)
    asked = _asked(fake_worker, stored)
    no_cache = await _post(local_gateway, stored_body, **{"Cache-Control": "no-cache"})
    assert no_cache.headers["x-cache"] == "bypass"
    assert _asked(fake_worker, stored) == asked + 1, "no-cache must reach the worker"
    before = await _redis_commands(private_redis.url)
    await asyncio.sleep(1.1)  # past the local TTL (1 s): Redis is asked again, and hits
    assert (await _post(local_gateway, stored_body)).headers["x-cache"] == "hit"
    assert await _redis_commands(private_redis.url) > before


async def _wait_for_redis(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """Store ``body``'s answer: a miss once the breaker has closed again."""
    deadline = time.monotonic() + 15
    while (await _post(client, body)).headers["x-cache"] != "miss":
        assert time.monotonic() < deadline, "Redis never came back"
        await asyncio.sleep(0.3)


def _samples(metrics_text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_hits_from_memory_still_count_against_the_keys_limits(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    key = create_key(log_database_url, "--rpm", "3")
    async with (
        keyed_gateway(fake_worker.url, log_database_url, cache_enabled=True) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        body = chat_body(_scripted(fake_worker, "fake:say:Yes."), temperature=0)
        outcomes = []
        for _ in range(4):
            response = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
            outcomes.append((response.status_code, response.headers.get("x-cache")))
    assert outcomes[:3] == [(200, "miss"), (200, "hit"), (200, "hit")]
    assert outcomes[3][0] == 429


def test_the_local_cache_is_bounded_in_bytes_and_drops_the_least_recently_used() -> None:
    sizes: list[int] = []
    local = LocalAnswers(max_bytes=1000, ttl_s=60, on_size=sizes.append)
    answer = CachedAnswer("x" * 150, "stop", 1, 1)  # about 380 bytes an entry
    local.put("a", answer)
    local.put("b", answer)
    assert local.get("a") == answer  # a is now the most recently used
    local.put("c", answer)
    assert local.get("b") is None  # b went first
    assert local.get("a") == answer
    assert local.get("c") == answer
    assert local.bytes <= 1000
    assert sizes[-1] == local.bytes
    local.put("huge", CachedAnswer("x" * 2000, "stop", 1, 1))
    assert local.get("huge") is None, "an entry over the bound is not kept"
    local.clear()
    assert (len(local), local.bytes, sizes[-1]) == (0, 0, 0)


def test_the_local_cache_expires_entries() -> None:
    now = [0.0]
    local = LocalAnswers(max_bytes=10_000, ttl_s=5, clock=lambda: now[0])
    local.put("a", ANSWER)
    now[0] = 4.9
    assert local.get("a") == ANSWER
    now[0] = 5.0
    assert local.get("a") is None
    assert local.bytes == 0


def _prepared() -> PreparedRequest:
    return PreparedRequest(
        model=MODEL, stream=False, worker_json=None,  # type: ignore[arg-type]
        images=(), prompt="hi", prompt_chars=2, token_budget=8, prompt_param="messages",
        canonical=b'{"messages":"hi","temperature":0}', temperature=0, seed=None,
        client_wants_usage=False,
    )  # fmt: skip


def test_a_new_checkpoint_or_namespace_empties_the_local_cache() -> None:
    roots = {"checkpoint": "/models/a"}
    local = LocalAnswers(max_bytes=10_000, ttl_s=60)
    stage = CacheStage(
        None,  # type: ignore[arg-type]  # plan() never touches Redis
        None,
        Settings(),
        Metrics(),
        lambda model, pool: roots["checkpoint"],
        local,
    )
    first = stage.plan(_prepared(), CacheDirectives())
    assert first.key is not None
    local.put(first.key, ANSWER)
    assert stage.plan(_prepared(), CacheDirectives()).key == first.key
    assert len(local) == 1, "the same checkpoint keeps what is there"
    roots["checkpoint"] = "/models/b"
    second = stage.plan(_prepared(), CacheDirectives())
    assert second.key != first.key
    assert len(local) == 0
    other_namespace = CacheStage(
        None,  # type: ignore[arg-type]
        None,
        Settings(cache_namespace="bumped"),
        Metrics(),
        lambda model, pool: roots["checkpoint"],
        local,
    )
    assert other_namespace.plan(_prepared(), CacheDirectives()).key not in (first.key, second.key)
