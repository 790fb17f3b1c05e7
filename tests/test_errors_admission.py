"""Errors at the door that tell a developer what to do (issue 27): a request that can
never fit the key's tokens per minute is not retried by the official openai SDK, and an
Authorization header in another scheme than Bearer is named as such."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.images import data_uri, image_bytes
from tests.support.metrics import scrape
from tests.support.requests import MODEL, chat_body, image_message

CHAT = "/v1/chat/completions"


async def test_a_request_over_the_whole_token_limit_is_not_retried_by_the_sdk(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url, "--tpm", "200")
    # 960 x 960 is 900 image tokens: more than the key may use in any minute.
    photo = image_message("what is it?", data_uri(image_bytes(size=(960, 960))))
    async with keyed_gateway(fake_worker.url, log_database_url) as url:
        refused = await http.post(url + CHAT, json=chat_body(photo), headers=bearer(key))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == (
            "request_exceeds_token_limit",
            "rate_limit_error",
        )
        assert "200 tokens per minute" in error["message"]
        assert refused.headers["x-should-retry"] == "false"
        assert "retry-after" not in refused.headers  # no wait makes it fit
        assert refused.headers["x-ratelimit-limit-tokens"] == "200"

        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=2) as sdk:
            # Bounded: a retrying SDK would sleep a Retry-After of a minute here.
            with pytest.raises(openai.RateLimitError) as refused_by_sdk:
                async with asyncio.timeout(30):
                    await sdk.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": photo}],  # type: ignore[misc,list-item]
                    )
        assert refused_by_sdk.value.code == "request_exceeds_token_limit"
        samples = await scrape(http, url)
        # One refusal for the httpx call above and one for the SDK's single attempt.
        assert samples['gateway_rate_limited_total{limit="tokens"}'] == 2


async def test_a_request_that_fits_later_is_still_a_retryable_429(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url, "--tpm", "40")
    small = chat_body("hello", max_tokens=16)  # 2 + 5 + 16 = 23 tokens
    async with keyed_gateway(fake_worker.url, log_database_url) as url:
        assert (await http.post(url + CHAT, json=small, headers=bearer(key))).is_success
        refused = await http.post(url + CHAT, json=small, headers=bearer(key))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "x-should-retry" not in refused.headers
    assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_another_authorization_scheme_is_named(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url)
    async with keyed_gateway(fake_worker.url, log_database_url) as url:
        for header in (f"Token {key}", f"Basic {key}", key):
            refused = await http.post(
                url + CHAT, json=chat_body(), headers={"Authorization": header}
            )
            assert refused.status_code == 401
            error = refused.json()["error"]
            assert error["code"] == "invalid_authorization_scheme"
            assert "'Authorization: Bearer <key>'" in error["message"]
            assert key not in refused.text  # never echoed
        missing = await http.post(url + CHAT, json=chat_body())
        assert missing.json()["error"]["code"] == "missing_api_key"
        empty = await http.post(url + CHAT, json=chat_body(), headers={"Authorization": "Bearer"})
        assert empty.json()["error"]["code"] == "missing_api_key"
