"""Named worker pools with weights (canary rollouts): settings, the weighted choice, and a
gateway in front of a stable and a canary worker whose checkpoints differ."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.config import Settings
from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.metrics import DEFAULT_POOL, Metrics
from gateway.upstream.pool import WorkerPool
from gateway.upstream.weights import WeightedRoundRobin
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import MODEL, chat_body
from tests.support.servers import run_gateway, serve

CHAT = "/v1/chat/completions"


def _pools(*pools: dict[str, Any]) -> str:
    return json.dumps(list(pools))


def _settings(**values: Any) -> Settings:
    """Settings as the environment gives them: strings, parsed by the validators."""
    return Settings(**values)


def test_pools_from_the_environment_and_the_single_pool_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_WORKER_URLS", "")
    monkeypatch.setenv(
        "GATEWAY_WORKER_POOLS",
        _pools(
            {"name": "stable", "weight": 95, "dns": ["http://w-stable.ns.svc:8000"]},
            {"name": "canary", "weight": 5, "urls": "http://10.0.0.9:8000/"},
        ),
    )
    pools = Settings().pools()
    assert [(p.name, p.weight, p.urls, p.dns) for p in pools] == [
        ("stable", 95, (), ("http://w-stable.ns.svc:8000",)),
        ("canary", 5, ("http://10.0.0.9:8000",), ()),
    ]
    monkeypatch.delenv("GATEWAY_WORKER_POOLS")
    monkeypatch.setenv("GATEWAY_WORKER_DNS", "http://workers:8000")
    (single,) = Settings().pools()
    assert (single.name, single.urls, single.dns) == (DEFAULT_POOL, (), ("http://workers:8000",))


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        (_pools({"name": "a", "urls": ["http://x:1"]}, {"name": "a", "urls": ["http://y:1"]}),
         "unique"),
        (_pools({"name": "a"}), "needs urls or dns"),
        (_pools({"name": "a", "weight": 0, "urls": ["http://x:1"]}), "greater than 0"),
        (_pools({"name": "a", "urls": ["ftp://x:1"]}), "http"),
        (_pools({"name": "Canary!", "urls": ["http://x:1"]}), "pattern"),
        ("[not json", "not JSON"),
    ],
)  # fmt: skip
def test_bad_pools_are_refused_at_start_up(pools: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(worker_urls=(), worker_pools=pools)


def test_pools_replace_urls_and_dns_rather_than_mix() -> None:
    pools = _pools({"name": "stable", "urls": ["http://x:1"]})
    with pytest.raises(ValidationError, match="one or the other"):
        _settings(worker_urls=("http://y:1",), worker_pools=pools)
    with pytest.raises(ValidationError, match="one or the other"):
        _settings(worker_urls=(), worker_dns=("http://z:1",), worker_pools=pools)


def test_weighted_round_robin_gives_exact_shares_and_skips_empty_pools() -> None:
    picker = WeightedRoundRobin({"stable": 95, "canary": 5})
    picks = [picker.pick({"stable", "canary"}) for _ in range(200)]
    assert Counter(picks) == {"stable": 190, "canary": 10}
    # Spread out, not in a burst: the canary's picks are at least 19 apart.
    canary_at = [i for i, p in enumerate(picks) if p == "canary"]
    assert min(b - a for a, b in itertools.pairwise(canary_at)) >= 19
    # A pool without an available worker is skipped; none available: None.
    assert {picker.pick({"stable"}) for _ in range(20)} == {"stable"}
    assert picker.pick(set()) is None


@dataclass
class RootedWorker(FakeWorker):
    """A fake worker whose model card names its own checkpoint, as vLLM's `root` does."""

    root: str = ""

    async def _models(self, _: Request) -> Response:
        card = {"id": MODEL, "object": "model", "created": 1, "owned_by": "fake",
                "root": self.root}  # fmt: skip
        return JSONResponse({"object": "list", "data": [card]})


async def test_canary_gets_its_share_its_own_cache_entries_and_its_log_rows(
    log_database_url: str, tmp_path: Path
) -> None:
    stable = RootedWorker(root="/models/Qwen/Qwen3-VL-8B-Instruct")
    canary = RootedWorker(root="/models/Qwen/Qwen3-VL-8B-Instruct-FP8")
    prompt = f"canary test {uuid.uuid4().hex[:8]}"
    stable.scripts[prompt] = "fake:say:from-bf16"
    canary.scripts[prompt] = "fake:say:from-fp8"
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url), spool_path=tmp_path / "spool.jsonl",
        flush_interval_s=0.05,
    )  # fmt: skip
    async with serve(stable.app()) as stable.url, serve(canary.app()) as canary.url:
        pools = _pools(
            {"name": "stable", "weight": 3, "urls": [stable.url]},
            {"name": "canary", "weight": 1, "urls": [canary.url]},
        )
        overrides = {
            "worker_pools": pools, "cache_enabled": True, "log": log,
            "cache_namespace": f"canary-{uuid.uuid4().hex[:10]}",
        }  # fmt: skip
        async with run_gateway(**overrides) as url, httpx.AsyncClient(timeout=30) as http:
            # The same deterministic question eight times: weights 3:1 send two of them
            # to the canary, whose checkpoint differs, so it never gets stable's answer.
            answers = []
            for i in range(8):
                body = chat_body(prompt, temperature=0, max_tokens=8)
                response = await http.post(
                    url + CHAT, json=body, headers={"X-Request-ID": f"{prompt[-8:]}-{i}"}
                )
                assert response.status_code == 200, response.text
                content = response.json()["choices"][0]["message"]["content"]
                answers.append((content, response.headers["X-Cache"]))
            metrics = (await http.get(url + "/metrics")).text
    assert Counter(content for content, _ in answers) == {"from-bf16": 6, "from-fp8": 2}
    # Each checkpoint's first answer is a miss, every later one a hit on its own entry.
    for checkpoint in ("from-bf16", "from-fp8"):
        caches = [cache for content, cache in answers if content == checkpoint]
        assert caches[0] == "miss"
        assert set(caches[1:]) == {"hit"}
    # Each worker generated once: the rest came from the cache.
    assert (len(stable.requests), len(canary.requests)) == (1, 1)
    # The metrics carry the pool.
    series = [
        line for line in metrics.splitlines()
        if line.startswith("gateway_worker_requests_total{") and 'outcome="ok"' in line
    ]  # fmt: skip
    by_pool = {p: [s for s in series if f'pool="{p}"' in s] for p in ("stable", "canary")}
    assert [s.rsplit(" ", 1)[1] for s in by_pool["canary"]] == ["1.0"]
    assert canary.url in by_pool["canary"][0]
    assert [s.rsplit(" ", 1)[1] for s in by_pool["stable"]] == ["1.0"]
    # ...and so does the latency of their answers.
    for pool in ("stable", "canary"):
        assert f'gateway_pool_answer_seconds_count{{pool="{pool}",stream="false"}} 1.0' in metrics
    # Every row names its worker's pool (hits too: the pool the request was planned for).
    engine = create_sync_engine(log_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT pool, cache, answer FROM interactions WHERE prompt = :p"),
                {"p": prompt},
            ).all()
    finally:
        engine.dispose()
    generated = {(r.pool, r.answer) for r in rows if r.cache == "miss"}
    assert generated == {("stable", "from-bf16"), ("canary", "from-fp8")}
    assert len(rows) == 8


async def test_a_planned_pool_without_workers_falls_back_to_another() -> None:
    stable = RootedWorker(root="bf16")
    async with serve(stable.app()) as stable.url:
        pools = _pools(
            {"name": "stable", "weight": 1, "urls": [stable.url]},
            # Nothing listens there: the canary is never healthy.
            {"name": "canary", "weight": 100, "urls": ["http://127.0.0.1:9"]},
        )
        async with run_gateway(worker_pools=pools) as url, httpx.AsyncClient(timeout=30) as http:
            for _ in range(5):
                response = await http.post(url + CHAT, json=chat_body("hello"))
                assert response.status_code == 200
    assert len(stable.requests) == 5


async def test_each_pool_follows_its_own_dns_name() -> None:
    """Two headless Services, one per pool: each name's addresses join their own pool."""
    answers = {"w-stable.ns.svc": ["10.0.0.1", "10.0.0.2"], "w-canary.ns.svc": ["10.0.1.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    pools = _pools(
        {"name": "stable", "weight": 95, "dns": ["http://w-stable.ns.svc:8000"]},
        {"name": "canary", "weight": 5, "dns": ["http://w-canary.ns.svc:8000"]},
    )
    settings = _settings(worker_urls=(), worker_pools=pools)
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(session, settings, Metrics(), resolve=resolve)
        await pool.discover()
        assert sorted((w.url, w.pool) for w in pool.workers) == [
            ("http://10.0.0.1:8000", "stable"),
            ("http://10.0.0.2:8000", "stable"),
            ("http://10.0.1.1:8000", "canary"),
        ]
        answers["w-canary.ns.svc"] = ["10.0.1.2"]  # the canary pod was replaced
        await pool.discover()
        assert pool.pool_of("http://10.0.1.2:8000") == "canary"
        assert pool.pool_of("http://10.0.1.1:8000") is None


async def test_uncacheable_requests_keep_the_exact_shares() -> None:
    """Sampled answers bypass the cache, yet each request is still one pick of the pools."""
    stable, canary = RootedWorker(root="bf16"), RootedWorker(root="fp8")
    async with serve(stable.app()) as stable.url, serve(canary.app()) as canary.url:
        pools = _pools(
            {"name": "stable", "weight": 3, "urls": [stable.url]},
            {"name": "canary", "weight": 1, "urls": [canary.url]},
        )
        namespace = f"canary-{uuid.uuid4().hex[:10]}"
        async with (
            run_gateway(worker_pools=pools, cache_enabled=True, cache_namespace=namespace) as url,
            httpx.AsyncClient(timeout=30) as http,
        ):
            for i in range(12):
                body = chat_body(f"sampled {i}", temperature=0.7)
                response = await http.post(url + CHAT, json=body)
                assert response.headers["X-Cache"] == "bypass"
    assert (len(stable.requests), len(canary.requests)) == (9, 3)


async def test_an_answer_is_stored_only_under_the_checkpoint_that_produced_it() -> None:
    """A rolling BF16 -> FP8 update under one model name: one pool, two checkpoints. The
    key names the first worker's; an answer from the other worker is served, not stored."""
    bf16, fp8 = RootedWorker(root="/models/bf16"), RootedWorker(root="/models/fp8")
    prompt = f"rolling update {uuid.uuid4().hex[:8]}"
    bf16.scripts[prompt] = "fake:say:from-bf16"
    fp8.scripts[prompt] = "fake:say:from-fp8"
    async with serve(bf16.app()) as bf16.url, serve(fp8.app()) as fp8.url:
        namespace = f"rolling-{uuid.uuid4().hex[:10]}"
        async with (
            run_gateway(bf16.url, fp8.url, cache_enabled=True, cache_namespace=namespace,
                        redis_socket_timeout_s=2) as url,
            httpx.AsyncClient(timeout=30) as http,
        ):  # fmt: skip
            # Least-loaded with ties in turn: this one goes to the first worker, so the
            # next goes to the second.
            await http.post(url + CHAT, json=chat_body("warm-up", temperature=0.7))
            answers = []
            for _ in range(4):
                body = chat_body(prompt, temperature=0, max_tokens=8)
                response = await http.post(url + CHAT, json=body)
                content = response.json()["choices"][0]["message"]["content"]
                answers.append((response.headers["X-Cache"], content))
    assert answers[0] == ("miss", "from-fp8")  # the other checkpoint: served, not stored
    assert {content for cache, content in answers if cache == "hit"} == {"from-bf16"}
    assert len(fp8.requests) == 1
