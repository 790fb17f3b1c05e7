"""Image-text matching against the real engine: our score is the one computed directly from
the worker's full next-token distribution for the same prompt, by the documented rule; it
is cached like an answer and logged like one."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.matching.instruction import NO_SPELLINGS, YES_SPELLINGS, prompt_for
from tests.support.images import data_uri, image_bytes
from tests.support.requests import MODEL, image_chat_body
from tests.support.servers import run_gateway

pytestmark = pytest.mark.engine

PHOTO = data_uri(image_bytes(size=(96, 64)))


@pytest.fixture(scope="module")
async def gateway(
    worker_url: str, log_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    spool: Path = tmp_path_factory.mktemp("match") / "spool.jsonl"
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url), spool_path=spool, flush_interval_s=0.05
    )
    async with run_gateway(
        worker_url, cache_enabled=True, cache_namespace=f"match-{uuid.uuid4().hex[:8]}", log=log
    ) as url:
        yield url


async def _first_tokens(
    http: httpx.AsyncClient, worker_url: str, words: tuple[str, ...]
) -> set[int]:
    found = set()
    for word in words:
        answer = await http.post(
            f"{worker_url}/tokenize",
            json={"model": MODEL, "prompt": word, "add_special_tokens": False},
        )
        found.add(answer.json()["tokens"][0])
    return found


async def _expected_score(
    http: httpx.AsyncClient, worker_url: str, candidate: str
) -> tuple[float, float]:
    """P(yes) and P(no) from the worker's whole distribution over the answer's first token."""
    space = await _first_tokens(http, worker_url, (" ",))
    yes = await _first_tokens(http, worker_url, YES_SPELLINGS) - space
    no = await _first_tokens(http, worker_url, NO_SPELLINGS) - space
    yes, no = yes - no, no - yes
    body = image_chat_body(
        prompt_for(candidate), PHOTO, max_tokens=1, temperature=0, logprobs=True,
        top_logprobs=-1, return_tokens_as_token_ids=True,
    )  # fmt: skip
    answer = (await http.post(f"{worker_url}/v1/chat/completions", json=body)).json()
    (first,) = answer["choices"][0]["logprobs"]["content"]
    logprobs = {int(e["token"].split(":")[1]): e["logprob"] for e in first["top_logprobs"]}
    assert len(logprobs) == 640  # the tiny model's whole vocabulary
    return sum(math.exp(logprobs[t]) for t in yes), sum(math.exp(logprobs[t]) for t in no)


async def test_scores_are_p_yes_over_p_yes_and_no_from_the_workers_own_distribution(
    gateway: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    texts = ["a red leather handbag", "a pair of blue running shoes", "紫色的羊毛围巾"]
    answer = await http.post(f"{gateway}/v1/match", json={"image": PHOTO, "texts": texts})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    for item, candidate in zip(data, texts, strict=True):
        p_yes, p_no = await _expected_score(http, worker_url, candidate)
        # The same forward pass in another batch of the engine: equal to float precision.
        assert item["p_yes"] == pytest.approx(p_yes, rel=1e-4)
        assert item["p_no"] == pytest.approx(p_no, rel=1e-4)
        assert item["score"] == pytest.approx(p_yes / (p_yes + p_no), abs=1e-6)
    # Each text has its own score: a mix-up of texts or an order change would show.
    scores = [item["score"] for item in data]
    assert min(abs(a - b) for i, a in enumerate(scores) for b in scores[i + 1 :]) > 1e-5


async def test_a_repeated_match_is_served_from_the_cache_and_logged(
    gateway: str, log_database_url: str, http: httpx.AsyncClient
) -> None:
    texts = [f"{uuid.uuid4().hex[:8]} a wool scarf", "a leather belt"]
    first = await http.post(f"{gateway}/v1/match", json={"image": PHOTO, "texts": texts})
    again = await http.post(f"{gateway}/v1/match", json={"image": PHOTO, "texts": texts})
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert [i["cache"] for i in again.json()["data"]] == ["hit", "hit"]
    assert again.json()["data"] == [{**item, "cache": "hit"} for item in first.json()["data"]]
    request_id = again.headers["x-request-id"]
    row = None
    engine = create_sync_engine(log_database_url)
    try:
        for _ in range(100):
            with engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT endpoint, shape, cache, prompt, answer FROM interactions "
                        "WHERE request_id LIKE :rid"
                    ),
                    {"rid": f"{request_id}.%"},
                ).first()
            if row is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    assert row is not None
    assert tuple(row[:4]) == ("/v1/match", "match", "hit", "\n".join(texts))
    assert row[4] == "[" + ",".join(str(i["score"]) for i in again.json()["data"]) + "]"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image": PHOTO, "texts": []}, 400, "invalid_request"),
        ({"image": PHOTO, "texts": ["x"] * 11}, 400, "invalid_request"),
        ({"image": PHOTO, "texts": ["x" * 1001]}, 400, "prompt_too_long"),
        ({"image": "not base64!", "texts": ["a bag"]}, 400, "invalid_base64"),
        ({"image": PHOTO, "texts": ["buy cocaine here"]}, 400, "content_policy_violation"),
        ({"image": PHOTO, "texts": ["a bag"], "model": "nope"}, 404, "model_not_found"),
        ({"image": PHOTO, "texts": ["a bag"], "top_k": 3}, 400, "unsupported_parameter"),
    ],
)
async def test_bad_match_requests_get_our_4xx(
    gateway: str, http: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    answer = await http.post(f"{gateway}/v1/match", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
