"""MariaDB outage drill for API keys, on a private MariaDB the test crashes itself: keys
already in a replica's snapshot keep working, a key it has never seen gets a 503 (it
cannot be checked), requests without a usable key still get 401."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.auth import generate_key
from gateway.db.migrate import upgrade
from gateway.protocol import ErrorResponse
from tests.doubles.fake_worker import FakeWorker
from tests.support.auth import bearer, create_key, keyed_gateway
from tests.support.mariadb import PrivateMariaDB, running_private_mariadb
from tests.support.metrics import scrape
from tests.support.requests import chat_body

CHAT = "/v1/chat/completions"


@pytest.fixture
def private_db() -> Iterator[PrivateMariaDB]:
    with running_private_mariadb() as db:
        yield db


async def test_known_keys_survive_a_mariadb_outage(
    fake_worker: FakeWorker, private_db: PrivateMariaDB, http: httpx.AsyncClient
) -> None:
    url = private_db.create_database("vlm_auth")
    upgrade(url)
    key = create_key(url)
    # A well-formed key this replica has never seen: only the database could say.
    never_seen = generate_key().key
    async with keyed_gateway(fake_worker.url, url, refresh_s=0.2) as gateway:
        assert (await http.post(gateway + CHAT, json=chat_body(), headers=bearer(key))).is_success
        private_db.kill()

        async def failed_refreshes() -> float:
            samples = await scrape(http, gateway)
            return samples.get('gateway_auth_key_refreshes_total{outcome="failed"}', 0.0)

        deadline = time.monotonic() + 30
        while await failed_refreshes() < 2:  # the snapshot has outlived two reloads
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        ok = await http.post(gateway + CHAT, json=chat_body(), headers=bearer(key))
        assert ok.status_code == 200

        unchecked = await http.post(gateway + CHAT, json=chat_body(), headers=bearer(never_seen))
        assert unchecked.status_code == 503, unchecked.text
        error = ErrorResponse.model_validate_json(unchecked.content).error
        assert (error.code, error.type) == ("auth_unavailable", "server_error")
        assert int(unchecked.headers["retry-after"]) >= 1

        assert (await http.post(gateway + CHAT, json=chat_body())).status_code == 401
        garbage = {"Authorization": "Bearer not-a-key"}
        assert (
            await http.post(gateway + CHAT, json=chat_body(), headers=garbage)
        ).status_code == 401
