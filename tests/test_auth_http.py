"""API keys end to end: the CLI against a real MariaDB, gateways that require keys (in
front of the fake worker, and once the real engine), 401/403 in our error shape,
revocation reaching a second replica, and keys never reaching logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from gateway.db.engine import create_sync_engine
from gateway.interactions import InteractionLogSettings
from gateway.protocol import ErrorResponse
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, key_id, keyed_gateway, run_cli, secret_of
from tests.support.images import b64, image_bytes
from tests.support.metrics import scrape
from tests.support.requests import MODEL, chat_body, vqa_body

CHAT = "/v1/chat/completions"


def assert_error(response: httpx.Response, status: int, code: str, kind: str) -> None:
    assert response.status_code == status, response.text
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.code, error.type) == (code, kind)


def test_cli_creates_lists_and_revokes(log_database_url: str) -> None:
    key = create_key(log_database_url, "--rpm", "7", "--models", "a,b", name="cli test")
    public = key_id(key)
    code, listing = run_cli(log_database_url, "list", "--json")
    assert code == 0
    rows = [json.loads(line) for line in listing.splitlines()]
    mine = next(row for row in rows if row["key_id"] == public)
    assert mine["name"] == "cli test"
    assert mine["requests_per_minute"] == 7
    assert mine["tokens_per_minute"] is None
    assert mine["allowed_models"] == ["a", "b"]
    assert mine["revoked_at"] is None
    assert key not in listing
    assert secret_of(key) not in listing
    code, table = run_cli(log_database_url, "list")
    assert code == 0
    assert public in table
    assert secret_of(key) not in table

    assert run_cli(log_database_url, "revoke", public)[0] == 0
    rows = [
        json.loads(line) for line in run_cli(log_database_url, "list", "--json")[1].splitlines()
    ]
    assert next(row for row in rows if row["key_id"] == public)["revoked_at"] is not None
    assert run_cli(log_database_url, "revoke", "0123456789abcdef")[0] == 1

    engine = create_sync_engine(log_database_url)
    try:
        with engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT key_hash FROM api_keys WHERE key_id = %s", (public,)
            ).scalar_one()
    finally:
        engine.dispose()
    assert len(stored) == 32
    assert key.encode() not in stored


async def test_keys_are_required_on_v1_and_refused_in_our_shape(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    async with keyed_gateway(fake_worker.url, log_database_url) as url:
        # A key created after the gateway started works at once (looked up on a miss).
        key = create_key(log_database_url)
        ok = await http.post(url + CHAT, json=chat_body(), headers=bearer(key))
        assert ok.status_code == 200, ok.text
        models = await http.get(url + "/v1/models", headers=bearer(key))
        assert models.status_code == 200
        assert (await http.get(url + "/healthz")).status_code == 200  # no key needed

        missing = await http.post(url + CHAT, json=chat_body())
        assert_error(missing, 401, "missing_api_key", "authentication_error")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(await http.get(url + "/v1/models"), 401, "missing_api_key",
                     "authentication_error")  # fmt: skip
        unknown = "vlm-0123456789abcdef-" + "A" * 43
        wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        for header in ("Bearer garbage", f"Bearer {unknown}", f"Bearer {wrong_secret}",
                       "Basic dXNlcjpwYXNz"):  # fmt: skip
            refused = await http.post(url + CHAT, json=chat_body(),
                                      headers={"Authorization": header})  # fmt: skip
            basic = header.startswith("Basic")
            code = "invalid_authorization_scheme" if basic else "invalid_api_key"
            assert_error(refused, 401, code, "authentication_error")
            assert refused.headers["www-authenticate"] == "Bearer"
            assert key not in refused.text

        samples = await scrape(http, url)
        assert samples['gateway_auth_failures_total{reason="malformed"}'] == 1
        assert samples['gateway_auth_failures_total{reason="unknown"}'] == 1
        assert samples['gateway_auth_failures_total{reason="wrong_secret"}'] == 1
        assert samples['gateway_auth_failures_total{reason="missing"}'] == 3


async def _wait_for_status(
    http: httpx.AsyncClient, url: str, key: str, status: int, within_s: float
) -> float:
    start = time.monotonic()
    while True:
        response = await http.post(url + CHAT, json=chat_body(), headers=bearer(key))
        if response.status_code == status:
            return time.monotonic() - start
        assert time.monotonic() - start < within_s, response.text
        await asyncio.sleep(0.1)


async def test_revocation_reaches_every_replica(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url)
    async with (
        keyed_gateway(fake_worker.url, log_database_url, refresh_s=0.3) as first,
        keyed_gateway(fake_worker.url, log_database_url, refresh_s=0.3) as second,
    ):
        for url in (first, second):
            assert (await http.post(url + CHAT, json=chat_body(), headers=bearer(key))).is_success
        assert run_cli(log_database_url, "revoke", key_id(key))[0] == 0
        for url in (first, second):
            await _wait_for_status(http, url, key, 401, within_s=15)
        refused = await http.post(second + CHAT, json=chat_body(), headers=bearer(key))
        assert_error(refused, 401, "invalid_api_key", "authentication_error")
        samples = await scrape(http, second)
        assert samples['gateway_auth_failures_total{reason="revoked"}'] >= 1


async def test_a_key_limited_to_other_models_gets_403(
    fake_worker: FakeWorker, log_database_url: str, http: httpx.AsyncClient
) -> None:
    other = create_key(log_database_url, "--models", "another-model")
    mine = create_key(log_database_url, "--models", f"{MODEL},another-model")
    vqa = vqa_body(b64(image_bytes()), "what is it?")
    async with keyed_gateway(fake_worker.url, log_database_url) as url:
        refused = await http.post(url + CHAT, json=chat_body(), headers=bearer(other))
        assert_error(refused, 403, "model_not_permitted", "permission_error")
        # The simple shape names no model: the default one is checked all the same.
        refused = await http.post(url + "/v1/vqa", json=vqa, headers=bearer(other))
        assert_error(refused, 403, "model_not_permitted", "permission_error")
        assert (await http.post(url + CHAT, json=chat_body(), headers=bearer(mine))).is_success
        assert (await http.post(url + "/v1/vqa", json=vqa, headers=bearer(mine))).is_success


async def test_keys_never_reach_the_log_row_or_log_output(
    fake_worker: FakeWorker,
    log_database_url: str,
    http: httpx.AsyncClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = create_key(log_database_url)
    revoked = create_key(log_database_url)
    run_cli(log_database_url, "revoke", key_id(revoked))
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url), spool_path=tmp_path / "spool.jsonl",
        flush_interval_s=0.05,
    )  # fmt: skip
    request_ids = [f"auth-log-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    async with keyed_gateway(fake_worker.url, log_database_url, log=log) as url:
        cases = ((request_ids[0], key, 200), (request_ids[1], revoked, 401))
        for request_id, which, status in cases:
            headers = {**bearer(which), "X-Request-ID": request_id}
            response = await http.post(url + CHAT, json=chat_body(), headers=headers)
            assert response.status_code == status
    rows = _rows(log_database_url, request_ids)
    assert rows[request_ids[0]]["api_key_id"] == key_id(key)
    assert rows[request_ids[1]]["status_code"] == 401
    assert rows[request_ids[1]]["error_code"] == "invalid_api_key"
    for row in rows.values():
        dump = json.dumps(row, default=str)
        for secret in (key, revoked, secret_of(key), secret_of(revoked)):
            assert secret not in dump
    assert caplog.records  # the gateway did log (start-up, requests); none held a key
    # Nor does the worker see it: the gateway sends the worker's own key, if any.
    assert all(key not in json.dumps(headers) for headers, _ in fake_worker.requests)
    for secret in (key, revoked, secret_of(key), secret_of(revoked)):
        assert secret not in caplog.text


def _rows(database_url: str, request_ids: list[str]) -> dict[str, dict[str, object]]:
    engine = create_sync_engine(database_url)
    found: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 15
    try:
        while len(found) < len(request_ids) and time.monotonic() < deadline:
            with engine.connect() as conn:
                for request_id in request_ids:
                    row = conn.exec_driver_sql(
                        "SELECT * FROM interactions WHERE request_id LIKE %s",
                        (f"{request_id}.%",),
                    ).first()
                    if row is not None:
                        found[request_id] = dict(row._mapping)
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert set(found) == set(request_ids)
    return found


@pytest.mark.engine
async def test_a_key_works_against_the_real_engine(
    worker_url: str, log_database_url: str, http: httpx.AsyncClient
) -> None:
    key = create_key(log_database_url)
    async with keyed_gateway(worker_url, log_database_url) as url:
        body = chat_body("Is this bag real leather?", max_tokens=4)
        response = await http.post(url + CHAT, json=body, headers=bearer(key))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] is not None
        assert int(response.headers["x-ratelimit-remaining-requests"]) >= 0
        assert int(response.headers["x-ratelimit-limit-tokens"]) > 0
        refused = await http.post(url + CHAT, json=body)
        assert_error(refused, 401, "missing_api_key", "authentication_error")
