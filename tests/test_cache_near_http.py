"""Near-duplicate photos through the gateway app: real Redis, real keys and interaction log
(MariaDB), the scriptable worker (it answers by the photo's digest, so a replayed answer
is told from a fresh one). The same path through the real vLLM engine:
tests/test_cache_near_engine.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from gateway.moderation.settings import ModerationSettings
from loadtest.bench.near_corpus import draw_product, encode
from localstack.processes import free_port
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, key_id, keyed_gateway, run_cli
from tests.support.interactions import settings_for
from tests.support.mariadb import logged_rows
from tests.support.near import BAG, body, digest, indexed, jpeg, png
from tests.support.redis_cluster import RedisTarget


@pytest.fixture
async def near_gateway(
    fake_worker: FakeWorker, log_database_url: str, tmp_path: Path, redis_target: RedisTarget
) -> AsyncIterator[str]:
    """The gateway app with the feature on, over the machine's Redis, then a Redis Cluster."""
    log = settings_for(log_database_url, tmp_path / "spool.jsonl")
    async with keyed_gateway(
        fake_worker.url,
        log_database_url,
        cache_enabled=True,
        cache_near_enabled=True,
        cache_local_max_bytes=0,
        redis_url=redis_target.url,
        redis_cluster=redis_target.cluster,
        log=log,
    ) as url:
        yield url


def streamed_text(events: str) -> str:
    chunks = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _answer(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


async def test_the_same_photo_in_another_encoding_is_answered_from_the_cache(
    near_gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    near = bearer(create_key(log_database_url, "--cache", "near"))
    plain = bearer(create_key(log_database_url))
    seed = uuid.uuid4().hex[:6]  # the scripted answers are this test's own
    photo = draw_product(BAG)
    original = jpeg(photo)
    fake_worker.image_scripts[digest(original)] = f"fake:say:about the red bag {seed}"
    recoloured = draw_product(replace(BAG, colour=(40, 70, 150)))
    async with httpx.AsyncClient(base_url=near_gateway, timeout=30) as client:
        first = await client.post("/v1/chat/completions", json=body(original), headers=near)
        assert first.headers["x-cache"] == "miss"
        await indexed(client, 1)
        asked = len(fake_worker.requests)

        smaller = jpeg(photo, quality=70, scale=0.75)  # a CDN's resize, recompressed
        similar = await client.post("/v1/chat/completions", json=body(smaller), headers=near)
        assert similar.headers["x-cache"] == "similar"
        assert _answer(similar) == f"about the red bag {seed}"
        assert len(fake_worker.requests) == asked, "a near match never reaches a worker"

        streamed = await client.post(
            "/v1/chat/completions", json=body(png(photo), stream=True), headers=near
        )
        assert streamed.headers["x-cache"] == "similar"
        assert streamed_text(streamed.text) == f"about the red bag {seed}"

        blue = await client.post("/v1/chat/completions", json=body(jpeg(recoloured)), headers=near)
        assert blue.headers["x-cache"] == "miss", "another colour is another product"
        other = body(smaller, "What brand is this?")
        assert (await client.post("/v1/chat/completions", json=other, headers=near)).headers[
            "x-cache"
        ] == "miss"
        webp = encode(photo, "WEBP", 80)
        refused = await client.post(
            "/v1/chat/completions", json=body(webp), headers={**near, "Cache-Control": "no-cache"}
        )
        assert refused.headers["x-cache"] == "bypass"
        other_webp = encode(photo, "WEBP", 70)  # the no-cache answer was stored: not that
        not_opted = await client.post("/v1/chat/completions", json=body(other_webp), headers=plain)
        assert not_opted.headers["x-cache"] == "miss", "a key that did not opt in"

    (row,) = logged_rows(log_database_url, similar.headers["x-request-id"])
    assert row["cache"] == "similar"
    assert len(row["cache_source"] or "") == 64
    assert 0 <= row["cache_distance"] <= 31
    (first_row,) = logged_rows(log_database_url, first.headers["x-request-id"])
    assert (first_row["cache"], first_row["cache_source"]) == ("miss", None)


async def test_an_exact_waiter_never_waits_on_a_near_match(
    near_gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    """A leader generates for a re-encoded photo; an identical request waits for it (its
    answer, not a near one), while an opted-in key is answered from the original at once."""
    near = bearer(create_key(log_database_url, "--cache", "near"))
    plain = bearer(create_key(log_database_url))
    seed = uuid.uuid4().hex[:6]
    photo = draw_product(replace(BAG, seed=8, label="ORBIT"))
    original, variant = jpeg(photo), jpeg(photo, quality=75, scale=0.8)
    fake_worker.image_scripts[digest(original)] = f"fake:say:original {seed}"
    gate = f"near-{seed}"
    fake_worker.image_scripts[digest(variant)] = f"fake:gatesay:{gate}:variant {seed}"
    async with httpx.AsyncClient(base_url=near_gateway, timeout=30) as client:
        post = client.post
        first = await post("/v1/chat/completions", json=body(original), headers=plain)
        assert first.headers["x-cache"] == "miss"
        await indexed(client, 1)
        leader = asyncio.create_task(
            post("/v1/chat/completions", json=body(variant), headers=plain)
        )
        await asyncio.sleep(0.3)  # the leader holds the lease, its worker waits on the gate
        waiter = asyncio.create_task(
            post("/v1/chat/completions", json=body(variant), headers=plain)
        )
        await asyncio.sleep(0.3)
        similar = await post("/v1/chat/completions", json=body(variant), headers=near)
        assert similar.headers["x-cache"] == "similar"
        assert _answer(similar) == f"original {seed}"
        assert (leader.done(), waiter.done()) == (False, False)
        fake_worker.gate(gate).set()
        led, waited = await leader, await waiter
    assert (led.headers["x-cache"], _answer(led)) == ("miss", f"variant {seed}")
    assert (waited.headers["x-cache"], _answer(waited)) == ("coalesced", f"variant {seed}")


async def test_off_for_the_deployment_means_exact_misses_only(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    near = bearer(create_key(log_database_url, "--cache", "near"))
    photo = draw_product(replace(BAG, seed=9, label="LUMA"))
    namespace = f"test-near-off-{uuid.uuid4().hex[:8]}"
    async with (
        keyed_gateway(
            fake_worker.url, log_database_url, namespace=namespace, cache_enabled=True
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        first = await client.post("/v1/chat/completions", json=body(jpeg(photo)), headers=near)
        await asyncio.sleep(0.3)
        again = body(jpeg(photo, quality=70, scale=0.75))
        second = await client.post("/v1/chat/completions", json=again, headers=near)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "miss")


def test_a_keys_near_option_is_stored_with_its_scope(log_database_url: str) -> None:
    ids = {
        option: key_id(create_key(log_database_url, "--cache", option))
        for option in ("near", "key,near", "key")
    }
    engine = create_sync_engine(log_database_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT key_id, cache_scope, cache_near FROM api_keys")
            rows = {row.key_id: (row.cache_scope, row.cache_near) for row in conn.execute(query)}
    finally:
        engine.dispose()
    assert rows[ids["near"]] == ("shared", 1)
    assert rows[ids["key,near"]] == ("key", 1)
    assert rows[ids["key"]] == ("key", 0)
    with pytest.raises(SystemExit):
        run_cli(log_database_url, "create", "--name", "x", "--cache", "shared,key")


async def test_a_near_answer_moderation_now_refuses_is_evicted_at_its_source(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    """Stored where answers were not checked, refused where they are: the answer it came
    from is forgotten, so the original photo's next request asks a worker again."""
    near = bearer(create_key(log_database_url, "--cache", "near"))
    photo = draw_product(replace(BAG, seed=10, label="VERA"))
    original = jpeg(photo)
    fake_worker.image_scripts[digest(original)] = "fake:say:Nice bag. Cheap viagra at our shop!"
    namespace = f"test-near-mod-{uuid.uuid4().hex[:8]}"
    shared: dict[str, Any] = {"namespace": namespace, "cache_enabled": True}
    unchecked = ModerationSettings(check_answers=False)
    async with (
        keyed_gateway(fake_worker.url, log_database_url, cache_near_enabled=True,
                      cache_local_max_bytes=0, moderation=unchecked, **shared) as lax,
        keyed_gateway(fake_worker.url, log_database_url, cache_near_enabled=True,
                      cache_local_max_bytes=0, **shared) as strict,
    ):  # fmt: skip
        async with httpx.AsyncClient(base_url=lax, timeout=30) as client:
            first = await client.post("/v1/chat/completions", json=body(original), headers=near)
            assert first.headers["x-cache"] == "miss"
            await indexed(client, 1)
        async with httpx.AsyncClient(base_url=strict, timeout=30) as client:
            variant = body(jpeg(photo, quality=70, scale=0.75))
            refused = await client.post("/v1/chat/completions", json=variant, headers=near)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "content_policy_violation"
        async with httpx.AsyncClient(base_url=lax, timeout=30) as client:
            again = await client.post("/v1/chat/completions", json=body(original), headers=near)
        assert again.headers["x-cache"] == "miss", "the refused answer was evicted"


async def test_a_corrupt_photo_is_a_400_not_a_near_lookup_error(
    near_gateway: str, log_database_url: str
) -> None:
    near = bearer(create_key(log_database_url, "--cache", "near"))
    whole = jpeg(draw_product(replace(BAG, seed=11)))
    truncated = whole[: len(whole) // 2]  # the header is fine: only the full decode fails
    async with httpx.AsyncClient(base_url=near_gateway, timeout=30) as client:
        response = await client.post("/v1/chat/completions", json=body(truncated), headers=near)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_image"
    assert 'gateway_cache_near_lookups_total{result="error"} 1.0' in metrics


async def test_a_private_key_borrows_only_its_own_answers(
    near_gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    own = bearer(create_key(log_database_url, "--cache", "key,near"))
    other = bearer(create_key(log_database_url, "--cache", "near"))
    photo = draw_product(replace(BAG, seed=12, label="ZENO"))
    async with httpx.AsyncClient(base_url=near_gateway, timeout=30) as client:
        chat = "/v1/chat/completions"
        assert (await client.post(chat, json=body(jpeg(photo)), headers=own)).headers[
            "x-cache"
        ] == "miss"
        await indexed(client, 1)
        variant = body(jpeg(photo, quality=70, scale=0.75))
        elsewhere = await client.post(chat, json=variant, headers=other)
        assert elsewhere.headers["x-cache"] == "miss", "another key never sees its answers"
        await indexed(client, 2)
        mine = await client.post(chat, json=body(jpeg(photo, quality=60, scale=0.6)), headers=own)
        assert mine.headers["x-cache"] == "similar"


async def test_without_redis_identical_requests_still_share_one_generation(
    fake_worker: FakeWorker, log_database_url: str
) -> None:
    """Redis unreachable: an opted-in key's requests go on as any other's (the coalescer
    leads for this replica alone), not each to a worker."""
    near = bearer(create_key(log_database_url, "--cache", "near"))
    photo = jpeg(draw_product(replace(BAG, seed=13, label="ORBIT")))
    gate = f"near-down-{uuid.uuid4().hex[:6]}"
    fake_worker.image_scripts[digest(photo)] = f"fake:gatesay:{gate}:alone"
    asked = len(fake_worker.requests)
    async with (
        keyed_gateway(
            fake_worker.url,
            log_database_url,
            cache_enabled=True,
            cache_near_enabled=True,
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        chat = "/v1/chat/completions"
        requests = [
            asyncio.create_task(client.post(chat, json=body(photo), headers=near)) for _ in range(3)
        ]
        await asyncio.sleep(0.5)
        fake_worker.gate(gate).set()
        answers = await asyncio.gather(*requests)
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert len(fake_worker.requests) - asked == 1
