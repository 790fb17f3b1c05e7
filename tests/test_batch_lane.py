"""Batch lines on the gateway (gateway/batch/lane.py), in front of the fake worker: the
runner's token makes a request a batch line, which reaches the worker with vLLM's low
priority and acts for its batch's owner key without its online limits. The real engine
serves batch lines end to end in tests/test_batch_engine.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from gateway.batch.lane import BATCH_HEADER, KEY_HEADER, TOKEN_HEADER
from gateway.batch.settings import BatchSettings
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, key_id, keyed_gateway
from tests.support.batch import RUNNER_TOKEN
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

BATCH_ID = "batch_" + "ab" * 16
BATCH = BatchSettings(runner_token=SecretStr(RUNNER_TOKEN), priority=7)


def _line_headers(key: str = "", token: str = RUNNER_TOKEN) -> dict[str, str]:
    return {TOKEN_HEADER: token, BATCH_HEADER: BATCH_ID, KEY_HEADER: key}


@pytest.fixture(scope="module")
async def gateway(fake_worker: FakeWorker) -> AsyncIterator[str]:
    async with run_gateway(fake_worker.url, batch=BATCH) as url:
        yield url


async def test_batch_lines_reach_the_worker_with_a_low_priority_and_online_ones_without(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    url = f"{gateway}/v1/chat/completions"
    fake_worker.requests.clear()
    online = await http.post(url, json=chat_body("an online question"))
    line = await http.post(url, json=chat_body("a batch question"), headers=_line_headers())
    assert (online.status_code, line.status_code) == (200, 200)
    (_, online_body), (_, line_body) = fake_worker.requests
    assert "priority" not in online_body
    assert line_body["priority"] == 7
    assert {k: v for k, v in line_body.items() if k != "priority"} == {
        **online_body,
        "messages": line_body["messages"],
    }


@pytest.mark.parametrize(
    "headers",
    [
        _line_headers(token="not-the-token"),
        {BATCH_HEADER: BATCH_ID},
        {**_line_headers(), BATCH_HEADER: "batch_../../etc"},
        {**_line_headers(), KEY_HEADER: "not a key id"},
    ],
)
async def test_batch_headers_without_the_runners_token_are_refused(
    gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    fake_worker.requests.clear()
    answer = await http.post(f"{gateway}/v1/chat/completions", json=chat_body("x"), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert fake_worker.requests == []


async def test_without_a_configured_token_no_request_is_a_batch_line(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    async with run_gateway(fake_worker.url) as url:
        answer = await http.post(
            f"{url}/v1/chat/completions", json=chat_body("x"), headers=_line_headers()
        )
    assert answer.status_code == 401


async def test_a_batch_line_acts_for_its_owner_without_the_owners_online_limits(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url, "--rpm", "1", name="batch-owner")
    narrow = create_key(log_database_url, "--models", "another-model", name="batch-narrow")
    async with keyed_gateway(fake_worker.url, log_database_url, batch=BATCH) as url:
        endpoint = f"{url}/v1/chat/completions"
        first = await http.post(endpoint, json=chat_body("x"), headers=bearer(key))
        second = await http.post(endpoint, json=chat_body("x"), headers=bearer(key))
        assert (first.status_code, second.status_code) == (200, 429)  # one a minute online
        for _ in range(3):  # ... and batch lines are paced by the runner, not that limit
            line = await http.post(
                endpoint, json=chat_body("x"), headers=_line_headers(key_id(key))
            )
            assert line.status_code == 200, line.text
        refused = await http.post(
            endpoint, json=chat_body("x"), headers=_line_headers(key_id(narrow))
        )
        assert refused.status_code == 403  # the owner's model permissions still hold
        unknown = await http.post(endpoint, json=chat_body("x"), headers=_line_headers("0" * 16))
        assert unknown.status_code == 401
