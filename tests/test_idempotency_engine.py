"""Idempotency-Key through a gateway with API keys, Redis and the interaction log, to the
real vLLM CPU worker (cpu-tiny: random weights, noise answers).

Generations are counted in the worker's own metrics. A retried request asks for ASKED
tokens with ignore_eos, so one whole generation is exactly one finished request and ASKED
tokens; a generation started again shows as a second finished request, and one aborted
when its client hung up shows as tokens beyond ASKED (vLLM counts an aborted request
under none of its finish reasons, but counts the tokens it generated).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from pydantic import SecretStr

from gateway.interactions import InteractionLogSettings
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.mariadb import logged_rows
from tests.support.requests import MODEL, chat_body, vqa_body
from tests.support.worker import idle_state, worker_state
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"
ASKED = 600  # tokens: seconds of generation here, time to hang up in the middle
PROMPT = "is this real leather"
RETRIES = 3  # the hung-up attempts before the one that waits for its answer
# The SDK's own retries: a generation of SDK_ASKED tokens takes seconds here, many times
# the timeout; its backoff (0.5 s doubling to 8 s) over 8 retries waits about 40 s.
SDK_ASKED = 1500
SDK_TIMEOUT_S = 0.3


@pytest.fixture(scope="module")
def keys(log_database_url: str) -> tuple[str, str]:
    return create_key(log_database_url, name="app-a"), create_key(log_database_url, name="app-b")


@pytest.fixture
async def gateway(worker_url: str, log_database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url), spool_path=tmp_path / "spool.jsonl",
        flush_interval_s=0.05,
    )  # fmt: skip
    settings: dict[str, Any] = {"cache_enabled": True, "log": log, "idempotency_ttl_s": 300}
    async with keyed_gateway(worker_url, log_database_url, **settings) as url:
        yield url


def _headers(
    key: str, idempotency_key: str | None, request_id: str | None = None
) -> dict[str, str]:
    headers = bearer(key)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


async def _hang_up(
    http: httpx.AsyncClient,
    gateway: str,
    worker_url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    """One attempt of a client whose timeout is shorter than the generation: it leaves
    once the worker is generating (not after a timer, which on a busy machine could fire
    before the request even reached the worker)."""
    async with httpx.AsyncClient(timeout=120) as client:
        if body.get("stream"):
            async with client.stream(
                "POST", gateway + CHAT, json=body, headers=headers
            ) as response:
                assert response.status_code == 200
                chunks = 0
                async for _ in response.aiter_raw():
                    chunks += 1
                    if chunks == 5:  # tokens arrived: the worker is generating
                        break
            return
        request = asyncio.create_task(client.post(gateway + CHAT, json=body, headers=headers))
        while (await worker_state(http, worker_url))[0] == 0:
            assert not request.done(), "answered before the worker was seen running"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # some tokens generated
        assert not request.done(), "answered before the client hung up"
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request


def _sse_events(text: str) -> list[dict[str, Any]]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
async def test_a_client_that_hangs_up_and_retries_causes_one_generation(
    gateway: str,
    worker_url: str,
    keys: tuple[str, str],
    log_database_url: str,
    http: httpx.AsyncClient,
    temperature: float,
) -> None:
    body = chat_body(PROMPT, max_tokens=ASKED, ignore_eos=True, temperature=temperature)
    idempotency_key = str(uuid.uuid4())
    before = await idle_state(http, worker_url)
    for _ in range(RETRIES):
        await _hang_up(http, gateway, worker_url, body, _headers(keys[0], idempotency_key))
    request_id = f"idem-{uuid.uuid4().hex[:12]}"
    final = await http.post(
        gateway + CHAT,
        json=body,
        headers=_headers(keys[0], idempotency_key, request_id),
        timeout=300,
    )
    assert final.status_code == 200, final.text
    answer = final.json()
    assert answer["usage"]["completion_tokens"] == ASKED  # the whole answer
    assert answer["choices"][0]["finish_reason"] == "length"
    after = await idle_state(http, worker_url)
    # (finished requests, tokens generated): one generation, never aborted nor started again
    assert (after[1] - before[1], after[2] - before[2]) == (1, ASKED)
    assert final.headers["x-cache"] == "idempotent"
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert row["cache"] == "idempotent"
    assert row["status_code"] == 200


async def test_the_openai_sdk_with_a_short_timeout_gets_one_generation(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    """The official SDK as an app uses it: a timeout shorter than the generation and its
    own retries (with backoff), each sending the same Idempotency-Key. Its last tries
    find the stored answer. Without the key every try is aborted and started again."""
    tries: list[httpx2.Request] = []

    async def count(request: httpx2.Request) -> None:
        tries.append(request)

    before = await idle_state(http, worker_url)
    async with (
        httpx2.AsyncClient(event_hooks={"request": [count]}) as transport,  # the SDK's
        openai.AsyncOpenAI(
            base_url=f"{gateway}/v1", api_key=keys[0], timeout=SDK_TIMEOUT_S, max_retries=8,
            http_client=transport,
        ) as client,
    ):  # fmt: skip
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=SDK_ASKED,
            temperature=1.0,
            extra_body={"ignore_eos": True},
            extra_headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    assert answer.usage is not None
    assert answer.usage.completion_tokens == SDK_ASKED
    assert len(tries) > 1, "the SDK never timed out: the generation was shorter than it"
    assert len({t.headers["idempotency-key"] for t in tries}) == 1
    after = await idle_state(http, worker_url)
    assert (after[1] - before[1], after[2] - before[2]) == (1, SDK_ASKED)


async def test_a_stream_retried_after_a_hang_up_gets_the_whole_answer(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    """A streamed retry waits for the generation still running and gets its whole answer
    replayed as SSE (no live join of the tokens: docs/IDEMPOTENCY.md)."""
    body = chat_body(
        PROMPT, max_tokens=ASKED, ignore_eos=True, temperature=1.0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    headers = _headers(keys[0], str(uuid.uuid4()))
    before = await idle_state(http, worker_url)
    await _hang_up(http, gateway, worker_url, body, headers)
    retry = await http.post(gateway + CHAT, json=body, headers=headers, timeout=300)
    assert retry.status_code == 200
    events = _sse_events(retry.text)
    assert events[-1]["usage"]["completion_tokens"] == ASKED
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "length"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    after = await idle_state(http, worker_url)
    assert (after[1] - before[1], after[2] - before[2]) == (1, ASKED)
    assert retry.headers["x-cache"] == "idempotent"
    # The same stored sample, in the other shape for a client that retries without stream.
    plain_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    plain = await http.post(gateway + CHAT, json=plain_body, headers=headers)
    assert plain.headers["x-cache"] == "idempotent"
    assert plain.json()["choices"][0]["message"]["content"] == streamed
    assert (await idle_state(http, worker_url))[1] == after[1]


async def test_the_same_key_with_another_body_is_a_409(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    headers = _headers(keys[0], str(uuid.uuid4()))
    body = chat_body(PROMPT, max_tokens=4, temperature=1.0)
    before = await idle_state(http, worker_url)
    first = await http.post(gateway + CHAT, json=body, headers=headers)
    assert first.status_code == 200
    other = await http.post(gateway + CHAT, json={**body, "max_tokens": 5}, headers=headers)
    assert other.status_code == 409
    assert other.json() == {
        "error": {
            "message": other.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "Idempotency-Key",
            "code": "idempotency_key_reused",
        }
    }
    assert "different request body" in other.json()["error"]["message"]
    again = await http.post(gateway + CHAT, json=body, headers=headers)  # the first body: fine
    assert again.headers["x-cache"] == "idempotent"
    assert again.json()["choices"] == first.json()["choices"]
    after = await idle_state(http, worker_url)
    assert after[1] - before[1] == 1


async def test_another_api_key_with_the_same_idempotency_key_gets_its_own_generation(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    idempotency_key = str(uuid.uuid4())
    body = chat_body(PROMPT, max_tokens=16, temperature=1.0)
    before = await idle_state(http, worker_url)
    mine = await http.post(gateway + CHAT, json=body, headers=_headers(keys[0], idempotency_key))
    theirs = await http.post(gateway + CHAT, json=body, headers=_headers(keys[1], idempotency_key))
    mine_again = await http.post(
        gateway + CHAT, json=body, headers=_headers(keys[0], idempotency_key)
    )
    assert [r.status_code for r in (mine, theirs, mine_again)] == [200, 200, 200]
    assert (theirs.headers["x-cache"], mine_again.headers["x-cache"]) == ("miss", "idempotent")
    assert mine_again.json()["choices"] == mine.json()["choices"]
    after = await idle_state(http, worker_url)
    assert after[1] - before[1] == 2  # one per API key


async def test_without_the_header_sampled_requests_are_generated_each_time(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    """Today's behaviour, kept: a sampled request asks for a fresh sample every time."""
    body = chat_body(PROMPT, max_tokens=4, temperature=1.0)
    before = await idle_state(http, worker_url)
    for _ in range(2):
        response = await http.post(gateway + CHAT, json=body, headers=_headers(keys[0], None))
        assert response.status_code == 200
        assert response.headers["x-cache"] == "bypass"
    after = await idle_state(http, worker_url)
    assert after[1] - before[1] == 2


async def test_vqa_retries_get_the_stored_answer(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient
) -> None:
    body = vqa_body(base64.b64encode(png_bytes(48, 48, seed=27)).decode(), PROMPT, max_tokens=8)
    headers = _headers(keys[0], str(uuid.uuid4()))
    before = await idle_state(http, worker_url)
    first = await http.post(gateway + "/v1/vqa", json=body, headers=headers)
    retry = await http.post(gateway + "/v1/vqa", json=body, headers=headers)
    assert (first.status_code, retry.status_code) == (200, 200)
    assert retry.headers["x-cache"] == "idempotent"
    assert retry.json() == first.json()
    after = await idle_state(http, worker_url)
    assert after[1] - before[1] == 1


@pytest.mark.parametrize("bad", [b"has space", b"x" * 256, "é".encode()])
async def test_a_malformed_key_is_a_clear_400_that_never_reaches_the_worker(
    gateway: str, worker_url: str, keys: tuple[str, str], http: httpx.AsyncClient, bad: bytes
) -> None:
    before = await idle_state(http, worker_url)
    headers = [(k.encode(), v.encode()) for k, v in bearer(keys[0]).items()]
    headers.append((b"Idempotency-Key", bad))
    response = await http.post(
        gateway + CHAT, json=chat_body(PROMPT, max_tokens=4), headers=headers
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_idempotency_key", "Idempotency-Key")
    after = await idle_state(http, worker_url)
    assert after[1] == before[1]
