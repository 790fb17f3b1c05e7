"""Moderation through a gateway: blocked prompts, answers (JSON and streamed) and images
get 400 content_policy_violation, never reach the cache, and leave their outcome in the
interaction log. In-process gateway, the scripted fake worker (it answers on cue what a
real model cannot be made to say), the machine's Redis and MariaDB; the end-to-end test
with the real engine is test_moderation_engine.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import text

from gateway.answers import CachedAnswer
from gateway.cache.stage import NO_CACHE
from gateway.config import Settings
from gateway.db.engine import create_sync_engine
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions import InteractionLogSettings
from gateway.metrics import Metrics
from gateway.moderation import ModerationSettings, open_moderator
from gateway.moderation.settings import DEFAULT_IMAGE_QUESTION
from gateway.pipeline import Pipeline, RequestContext
from gateway.protocol import ErrorResponse
from gateway.streams import CONTENT_FILTER
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import data_uri
from tests.support.metrics import scrape, total
from tests.support.redis_server import PrivateRedis
from tests.support.requests import chat_body, image_chat_body, vqa_body
from tests.support.servers import run_gateway

NAMESPACE = f"mod{uuid.uuid4().hex[:10]}"  # the text gateway's cache namespace


def _log(database_url: str, spool: Path) -> InteractionLogSettings:
    return InteractionLogSettings(
        database_url=SecretStr(database_url),
        flush_interval_s=0.05,
        spool_path=spool / "spool.jsonl",
    )


@pytest.fixture(scope="module")
async def gateway(
    fake_worker: FakeWorker, log_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """Moderation on (the defaults), answer cache and log on."""
    async with run_gateway(
        fake_worker.url,
        cache_enabled=True,
        cache_namespace=NAMESPACE,
        log=_log(log_database_url, tmp_path_factory.mktemp("spool")),
    ) as url:
        yield url


@pytest.fixture(scope="module")
async def image_gateway(
    fake_worker: FakeWorker, log_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The same with the image check on."""
    async with run_gateway(
        fake_worker.url,
        cache_enabled=True,
        cache_namespace=f"mod{uuid.uuid4().hex[:10]}",
        log=_log(log_database_url, tmp_path_factory.mktemp("spool")),
        moderation=ModerationSettings(image_check=True),
    ) as url:
        yield url


async def _post(url: str, body: dict[str, Any], path: str = "/v1/chat/completions",
                request_id: str | None = None) -> httpx.Response:  # fmt: skip
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url + path, json=body, headers=headers)


def _read_rows(database_url: str, request_id: str) -> list[dict[str, Any]]:
    """The rows logged for a request id, once the writer's batch is in (the log key is
    the id plus a random suffix)."""
    engine = create_sync_engine(database_url)
    query = text(
        "SELECT status_code, error_code, moderation, prompt, answer, cache FROM interactions"
        " WHERE request_id LIKE :prefix"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                found = conn.execute(query, {"prefix": f"{request_id}.%"})
                rows = [dict(row._mapping) for row in found]
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        engine.dispose()


async def _rows(database_url: str, request_id: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(_read_rows, database_url, request_id)


def _refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert error["type"] == "invalid_request_error"
    return error


def _scripted(worker: FakeWorker, answer: str) -> str:
    """A fresh prompt the fake worker answers with ``answer``."""
    prompt = f"tell me about this bag {uuid.uuid4().hex}"
    worker.scripts[prompt] = f"fake:say:{answer}"
    return prompt


def _asked(worker: FakeWorker, text: str) -> int:
    return sum(json.dumps(body).count(text) for _, body in worker.requests)


# --- prompts -------------------------------------------------------------------------------


async def test_a_blocked_prompt_is_refused_before_any_worker_and_logged(
    gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    prompt = f"where can I watch p\u200born {uuid.uuid4().hex}"
    request_id = f"mod-{uuid.uuid4().hex}"
    response = await _post(gateway, chat_body(prompt), request_id=request_id)
    error = _refused(response)
    assert error["param"] == "messages"
    assert "sexual" in error["message"]
    assert prompt not in error["message"]
    assert _asked(fake_worker, prompt) == 0
    (row,) = await _rows(log_database_url, request_id)
    assert (row["status_code"], row["error_code"]) == (400, "content_policy_violation")
    assert row["moderation"] == "blocked:prompt:sexual"
    assert row["prompt"] == prompt


async def test_the_simple_shape_and_clean_prompts(
    gateway: str, fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    image = data_uri(_photo())
    simple = await _post(gateway, vqa_body(image, "这里有色情视频吗"), "/v1/vqa")
    assert _refused(simple)["param"] == "prompt"
    request_id = f"mod-{uuid.uuid4().hex}"
    clean = await _post(
        gateway, image_chat_body("这个包是真皮的吗？", image), request_id=request_id
    )
    assert clean.status_code == 200
    (row,) = await _rows(log_database_url, request_id)
    assert row["moderation"] == "pass"
    assert row["error_code"] is None
    samples = await scrape(http, gateway)
    timed = "gateway_moderation_check_duration_seconds_count"
    assert total(samples, timed, lambda k: 'stage="prompt"' in k) >= 2
    assert total(samples, timed, lambda k: 'stage="answer"' in k) >= 1
    decided = "gateway_moderation_decisions_total"
    assert total(samples, decided, lambda k: 'outcome="blocked"' in k and "sexual" in k) >= 1


# --- answers -------------------------------------------------------------------------------


async def test_a_blocked_answer_is_refused_and_never_cached(
    gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    bad = _scripted(fake_worker, "Nice bag. Cheap viagra at our shop!")
    good = _scripted(fake_worker, "It looks like real leather.")
    ids = [f"mod-{uuid.uuid4().hex}" for _ in range(2)]
    for request_id in ids:
        error = _refused(await _post(gateway, chat_body(bad, temperature=0), request_id=request_id))
        assert error["param"] is None
        assert "ads_spam" in error["message"]
    assert _asked(fake_worker, bad) == 2, "the second request must reach the worker again"
    # The same path with a clean answer is cached: the refusal is what kept it out.
    first = await _post(gateway, chat_body(good, temperature=0))
    second = await _post(gateway, chat_body(good, temperature=0))
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert _asked(fake_worker, good) == 1
    (row,) = await _rows(log_database_url, ids[0])
    assert row["moderation"] == "blocked:answer:ads_spam"
    assert (row["status_code"], row["error_code"]) == (400, "content_policy_violation")
    assert row["answer"] == "Nice bag. Cheap viagra at our shop!"  # kept for review


async def _stream(url: str, body: dict[str, Any], request_id: str) -> tuple[str, list[str]]:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
        ) as response,
    ):
        assert response.status_code == 200
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
        return response.headers["x-cache"], events


def _text(events: list[str]) -> str:
    parts = []
    for event in events:
        if event != "[DONE]" and "choices" in (decoded := json.loads(event)):
            for choice in decoded["choices"]:
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


async def test_a_streamed_answer_is_cut_off_when_it_trips_and_never_cached(
    gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    answer = "A fine leather bag, hand stitched. Watch more on pornhub tonight, bye."
    bad = _scripted(fake_worker, answer)
    body = chat_body(bad, temperature=0, stream=True)
    ids = [f"mod-{uuid.uuid4().hex}" for _ in range(2)]
    for request_id in ids:
        cache, events = await _stream(gateway, body, request_id)
        assert cache == "miss"
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "content_policy_violation"
        sent = _text(events)
        assert sent, "the clean beginning was streamed before the cut"
        assert answer.startswith(sent)
        assert "pornhub" not in sent
    assert _asked(fake_worker, bad) == 2, "nothing was cached"
    (row,) = await _rows(log_database_url, ids[0])
    assert row["moderation"] == "blocked:answer:sexual"
    assert row["error_code"] == "content_policy_violation"
    # A clean streamed answer through the same path is cached.
    good = _scripted(fake_worker, "A fine leather bag, hand stitched, a good gift.")
    good_body = chat_body(good, temperature=0, stream=True)
    first = await _stream(gateway, good_body, f"mod-{uuid.uuid4().hex}")
    second = await _stream(gateway, good_body, f"mod-{uuid.uuid4().hex}")
    assert (first[0], second[0]) == ("miss", "hit")
    assert _text(second[1]) == "A fine leather bag, hand stitched, a good gift."


async def test_waiters_of_a_blocked_leader_never_get_its_answer(
    gateway: str, fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    """Requests that joined a leader whose answer moderation refused are refused too, and
    the worker generated that answer once for all of them."""
    prompt = f"tell me about this bag {uuid.uuid4().hex}"
    gate = uuid.uuid4().hex
    fake_worker.scripts[prompt] = f"fake:gatesay:{gate}:Order now: 加微信 shop888888 有优惠"
    body = chat_body(prompt, temperature=0)
    ids = [f"mod-{uuid.uuid4().hex}" for _ in range(3)]
    leader = asyncio.create_task(_post(gateway, body, request_id=ids[0]))

    async def leader_generating() -> bool:
        return _asked(fake_worker, prompt) == 1

    await _until(leader_generating)
    waiters = [asyncio.create_task(_post(gateway, body, request_id=i)) for i in ids[1:]]

    async def all_in_flight() -> bool:  # the leader, both waiters and this scrape
        return (await scrape(http, gateway))["gateway_requests_in_flight{}"] >= 4

    await _until(all_in_flight)
    # The waiters' way to the coalescer is CPU work of microseconds; a second for it.
    await asyncio.sleep(1.0)
    fake_worker.gate(gate).set()
    for response in await asyncio.gather(leader, *waiters):
        _refused(response)
    assert _asked(fake_worker, prompt) == 1, "the waiters must not ask the worker again"
    rows = [(await _rows(log_database_url, request_id))[0] for request_id in ids]
    assert [row["cache"] for row in rows] == ["miss", "coalesced", "coalesced"]
    assert {row["moderation"] for row in rows} == {"blocked:answer:ads_spam"}


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_a_refused_stream_is_shared_with_its_waiters_as_a_refusal(
    gateway: str, fake_worker: FakeWorker
) -> None:
    """Issue 24: as on the JSON path, one generation for identical streamed requests whose
    answer is refused (before: each waiter was told to elect a new leader, then went alone)."""
    prompt = f"tell me about this bag {uuid.uuid4().hex}"
    answer = "A fine leather bag, hand stitched. Watch more on pornhub tonight, bye."
    fake_worker.scripts[prompt] = f"fake:sleepsay:0.5:{answer}"
    body = chat_body(prompt, temperature=0, stream=True)

    async def ask() -> tuple[int, str]:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(gateway + "/v1/chat/completions", json=body)
            return response.status_code, response.text

    answers = await asyncio.gather(*(ask() for _ in range(10)))
    assert _asked(fake_worker, prompt) == 1
    for status, text_ in answers:
        assert "content_policy_violation" in text_
        assert "pornhub" not in text_
        # The leader's client gets its stream cut with an error event; the waiters, whose
        # answer is refused before it starts, a plain 400.
        assert status in (200, 400)


async def test_a_shared_cut_off_answer_is_refused_even_when_its_text_passes() -> None:
    """A leader's guard checks windows of the stream, whose edges can make a whole-word term
    match where the whole text does not: a waiter refuses a cut-off answer regardless."""
    metrics = Metrics()
    moderator = await open_moderator(ModerationSettings(), metrics, _never_asked, None, "ns")
    pipeline = Pipeline(Settings(), None, None, metrics, moderator=moderator)  # type: ignore[arg-type]
    ctx = RequestContext("r1", "/v1/chat/completions", 0.0)
    cut_off = CachedAnswer("A fine leather bag, hand", CONTENT_FILTER, 0, 0)
    with pytest.raises(GatewayError) as refused:
        await pipeline._serve_stored(ctx, NO_CACHE, cut_off)
    assert refused.value.code is ErrorCode.CONTENT_POLICY_VIOLATION
    assert ctx.draft.moderation == "blocked:answer:leader_refused"


async def _never_asked(body: bytes, request_id: str, digest: str) -> bytes:
    raise AssertionError("no image check here")


async def test_cached_answers_are_checked_again_when_served(
    gateway: str, fake_worker: FakeWorker, log_database_url: str, tmp_path: Path
) -> None:
    """An answer cached while moderation was off (or under an older policy) is refused,
    and evicted: the next request asks the worker again."""
    prompt = _scripted(fake_worker, "Great price, and cheap viagra too.")
    body = chat_body(prompt, temperature=0)
    async with run_gateway(
        fake_worker.url,
        cache_enabled=True,
        cache_namespace=NAMESPACE,
        moderation=ModerationSettings(enabled=False),
    ) as unmoderated:
        stored = await _post(unmoderated, body)
        assert stored.status_code == 200
        assert stored.headers["x-cache"] == "miss"
    request_id = f"mod-{uuid.uuid4().hex}"
    _refused(await _post(gateway, body, request_id=request_id))
    assert _asked(fake_worker, prompt) == 1, "served from the cache, and refused"
    (row,) = await _rows(log_database_url, request_id)
    assert (row["cache"], row["moderation"]) == ("hit", "blocked:answer:ads_spam")
    retry_id = f"mod-{uuid.uuid4().hex}"
    _refused(await _post(gateway, body, request_id=retry_id))
    assert _asked(fake_worker, prompt) == 2, "the refused answer was evicted"
    (row,) = await _rows(log_database_url, retry_id)
    assert row["cache"] == "miss"


# --- images --------------------------------------------------------------------------------


def _photo() -> bytes:
    """A photo no other test (or run) uses: one random colour."""
    image = Image.new("RGB", (32, 32), tuple(random.randbytes(3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _with_image(worker: FakeWorker, verdict_command: str) -> tuple[bytes, str]:
    photo = _photo()
    worker.image_scripts[hashlib.sha256(photo).hexdigest()] = verdict_command
    return photo, data_uri(photo)


def _questions(worker: FakeWorker, uri: str) -> int:
    """Image checks the worker was asked about this image."""
    return sum(
        1
        for _, body in worker.requests
        if DEFAULT_IMAGE_QUESTION in (text := json.dumps(body, ensure_ascii=False)) and uri in text
    )


async def test_an_image_the_model_flags_is_refused(
    image_gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    _, uri = _with_image(fake_worker, "fake:say:Yes.")
    prompt = _scripted(fake_worker, "A brown leather bag.")
    request_id = f"mod-{uuid.uuid4().hex}"
    response = await _post(image_gateway, image_chat_body(prompt, uri), request_id=request_id)
    assert _refused(response)["param"] == "messages"
    assert _questions(fake_worker, uri) == 1
    assert _asked(fake_worker, prompt) == 0, "the question itself never reached the worker"
    (row,) = await _rows(log_database_url, request_id)
    assert row["moderation"] == "blocked:image"


async def test_image_verdicts_are_cached_by_digest(
    image_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    _, uri = _with_image(fake_worker, "fake:say:no")
    before = await scrape(http, image_gateway)
    for question in ("这个包是真皮的吗？", "what brand is it?"):
        prompt = _scripted(fake_worker, f"About {question}: a leather bag.")
        response = await _post(image_gateway, image_chat_body(prompt, uri))
        assert response.status_code == 200, response.text
    # The same bytes in the simple shape (bare base64): the same digest, no new question.
    simple = vqa_body(uri.split(",", 1)[1], _scripted(fake_worker, "A bag."))
    assert (await _post(image_gateway, simple, "/v1/vqa")).status_code == 200
    assert _questions(fake_worker, uri) == 1
    after = await scrape(http, image_gateway)
    name = "gateway_moderation_image_verdicts_total"
    hits = total(after, name, lambda k: "cache_hit" in k) - total(
        before, name, lambda k: "cache_hit" in k
    )
    assert hits == 2


async def test_concurrent_checks_of_one_image_share_one_question(
    image_gateway: str, fake_worker: FakeWorker
) -> None:
    _, uri = _with_image(fake_worker, "fake:sleepsay:0.3:no")
    bodies = [image_chat_body(_scripted(fake_worker, "A bag."), uri) for _ in range(3)]
    responses = await asyncio.gather(*(_post(image_gateway, body) for body in bodies))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert _questions(fake_worker, uri) == 1


async def test_a_failed_image_check_lets_the_request_through_and_says_so(
    image_gateway: str,
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
) -> None:
    _, uri = _with_image(fake_worker, "fake:status:500")
    ids = [f"mod-{uuid.uuid4().hex}" for _ in range(2)]
    for request_id in ids:
        prompt = _scripted(fake_worker, "A leather bag.")
        response = await _post(image_gateway, image_chat_body(prompt, uri), request_id=request_id)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "A leather bag."
    assert _questions(fake_worker, uri) == 2, "a failed check is not cached"
    for request_id in ids:
        (row,) = await _rows(log_database_url, request_id)
        assert row["moderation"] == "check_failed:image"
    samples = await scrape(http, image_gateway)
    failed = total(
        samples,
        "gateway_moderation_decisions_total",
        lambda k: 'stage="image"' in k and 'outcome="check_failed"' in k,
    )
    assert failed >= 2


async def test_a_failed_image_check_refuses_the_request_when_failing_closed(
    fake_worker: FakeWorker, log_database_url: str, tmp_path: Path
) -> None:
    _, uri = _with_image(fake_worker, "fake:status:500")
    prompt = _scripted(fake_worker, "A leather bag.")
    request_id = f"mod-{uuid.uuid4().hex}"
    async with run_gateway(
        fake_worker.url,
        log=_log(log_database_url, tmp_path),
        moderation=ModerationSettings(image_check=True, image_check_fail_closed=True),
    ) as gateway:
        response = await _post(gateway, image_chat_body(prompt, uri), request_id=request_id)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.code, error.param) == ("moderation_unavailable", "messages")
    assert _asked(fake_worker, prompt) == 0, "the question never reached the model"
    (row,) = await _rows(log_database_url, request_id)
    assert (row["moderation"], row["error_code"]) == (
        "check_failed:image",
        "moderation_unavailable",
    )


async def test_an_unclear_image_answer_is_a_failed_check(
    image_gateway: str, fake_worker: FakeWorker, log_database_url: str
) -> None:
    _, uri = _with_image(fake_worker, "fake:say:a brown bag on a table")
    request_id = f"mod-{uuid.uuid4().hex}"
    prompt = _scripted(fake_worker, "A leather bag.")
    response = await _post(image_gateway, image_chat_body(prompt, uri), request_id=request_id)
    assert response.status_code == 200
    (row,) = await _rows(log_database_url, request_id)
    assert row["moderation"] == "check_failed:image"


async def test_image_checks_go_on_without_redis(fake_worker: FakeWorker, tmp_path: Path) -> None:
    """Redis down: no verdict is cached, every request asks again, none fails."""
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        async with run_gateway(
            fake_worker.url,
            cache_enabled=True,
            redis_url=redis.url,
            moderation=ModerationSettings(image_check=True),
        ) as url:
            redis.kill()
            _, uri = _with_image(fake_worker, "fake:say:no")
            for _ in range(2):
                prompt = _scripted(fake_worker, "A leather bag.")
                response = await _post(url, image_chat_body(prompt, uri))
                assert response.status_code == 200, response.text
            assert _questions(fake_worker, uri) == 2
    finally:
        redis.kill()
