"""Two gateway processes on one Redis Cluster (GATEWAY_REDIS_CLUSTER=true) in front of the
real engine: a key's limits, the answers and the generations are shared by the replicas
as on one Redis (issue 25).

Worker calls are counted from vLLM's own metrics. The cluster is the session's three
masters (tests/support/redis_cluster.py); its drills are in tests/test_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localstack.processes import LocalProcess, start_gateway
from tests.support.auth import bearer, create_key
from tests.support.images import data_uri
from tests.support.redis_cluster import PrivateCluster
from tests.support.requests import image_chat_body
from tests.support.worker import LOG_DIR, finished_requests
from worker.sample_image import png_bytes

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def gateways(
    worker_url: str, gateway_process_env: dict[str, str], redis_cluster: PrivateCluster
) -> Iterator[list[str]]:
    """Two replicas with API keys on, sharing one namespace on the cluster."""
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "GATEWAY_REDIS_URL": redis_cluster.target.url,  # one node: the others are read from it
        "GATEWAY_REDIS_CLUSTER": "true",
        "GATEWAY_AUTH_ENABLED": "true",
        # Generous: a loaded test machine must not turn these tests into fail-open drills.
        "GATEWAY_REDIS_SOCKET_TIMEOUT_S": "2",
        "GATEWAY_RATELIMIT_SOCKET_TIMEOUT_S": "2",
    }
    processes: list[LocalProcess] = []
    try:
        processes += [start_gateway([worker_url], LOG_DIR, env=env) for _ in range(2)]
        yield [p.url for p in processes]
    finally:
        for process in processes:
            process.stop()


def _chat(seed: int, **extra: Any) -> dict[str, Any]:
    photo = data_uri(png_bytes(48, 48, seed=seed), "image/png")
    fields = {"max_tokens": 4, "temperature": 0, **extra}
    return image_chat_body("Is this bag real leather?", photo, **fields)


async def _post(url: str, body: dict[str, Any], key: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.post(url + "/v1/chat/completions", json=body, headers=bearer(key))


async def test_a_keys_limits_are_shared_by_the_replicas(
    gateways: list[str], log_database_url: str
) -> None:
    key = create_key(log_database_url, "--rpm", "3", "--tpm", "100000")
    first, second = gateways
    body = _chat(31)
    tokens_left = []
    for url, requests_left in ((first, 2), (second, 1), (first, 0)):
        ok = await _post(url, body, key)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-remaining-requests"] == str(requests_left)
        tokens_left.append(int(ok.headers["x-ratelimit-remaining-tokens"]))
    refused = await _post(second, body, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # Each request costs the same tokens, charged to one budget whichever replica took it.
    cost = 100_000 - tokens_left[0]
    assert cost > 0
    assert tokens_left == [100_000 - cost, 100_000 - 2 * cost, 100_000 - 3 * cost]


# Three photos: three keys, each in a slot of its own, so on more than one node.
PHOTOS = (32, 33, 34)


async def test_an_answer_from_one_replica_is_a_hit_on_the_other(
    gateways: list[str], worker_url: str, log_database_url: str
) -> None:
    key = create_key(log_database_url)
    for seed in PHOTOS:
        body = _chat(seed)
        first = await _post(gateways[0], body, key)
        before = await finished_requests(worker_url)
        second = await _post(gateways[1], body, key)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert await finished_requests(worker_url) == before
        content = [r.json()["choices"][0]["message"]["content"] for r in (first, second)]
        assert content[0] == content[1]


async def test_identical_requests_on_both_replicas_cost_one_generation(
    gateways: list[str], worker_url: str, log_database_url: str
) -> None:
    key = create_key(log_database_url)
    # Long enough to overlap; eight identical requests per photo, over both replicas.
    bodies = [_chat(seed + 10, max_tokens=24, ignore_eos=True) for seed in PHOTOS] * 8
    before = await finished_requests(worker_url)
    responses = await asyncio.gather(
        *[_post(gateways[i % 2], body, key) for i, body in enumerate(bodies)]
    )
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert await finished_requests(worker_url) == before + len(PHOTOS)
    outcomes = [r.headers["x-cache"] for r in responses]
    assert outcomes.count("miss") == len(PHOTOS)
    assert set(outcomes) <= {"miss", "coalesced", "hit"}
