"""Shared fixtures: one real vLLM CPU worker (cpu-tiny) per test session, its database,
and the in-process doubles: a scriptable fake worker and gateways in front of either.

Set VLM_TEST_WORKER_URL to reuse a worker that is already running (faster
local iterations); otherwise the session starts its own on a free port through
the same launcher `make worker` uses, and stops it at the end.

Helpers live in tests/support/, stand-ins in tests/doubles/; only fixtures live here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.db.migrate import upgrade
from localstack.processes import StartError, start_worker
from tests.doubles.fake_worker import FakeWorker
from tests.support.mariadb import shared_database
from tests.support.redis_cluster import STANDALONE, PrivateCluster, RedisTarget
from tests.support.servers import run_gateway, serve
from tests.support.triton import TritonWorker, start_triton
from tests.support.worker import LOG_DIR, WORKER_STARTUP_TIMEOUT_S


@pytest.fixture(scope="session")
def worker_url() -> Iterator[str]:
    """Base URL of a ready cpu-tiny worker (served model `qwen3-vl-tiny`)."""
    reuse = os.environ.get("VLM_TEST_WORKER_URL")
    if reuse:
        yield reuse.rstrip("/")
        return
    try:
        worker = start_worker(LOG_DIR, timeout_s=WORKER_STARTUP_TIMEOUT_S)
    except StartError as exc:
        pytest.fail(str(exc))
    try:
        yield worker.url
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def triton_worker() -> Iterator[TritonWorker]:
    """A ready triton-cpu-tiny worker (Triton + our vLLM model); VLM_TEST_TRITON_URL
    ("http://host:port,metrics-port-offset") reuses a running one."""
    try:
        worker = start_triton()
    except StartError as exc:
        pytest.fail(str(exc))
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def log_database_url() -> Iterator[str]:
    """A migrated interaction-log database of this session's own, dropped at the end."""
    with shared_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """A Redis Cluster of three masters of this session's own, torn down at the end."""
    cluster = PrivateCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The machine's Redis, then this session's Redis Cluster: a test that takes it runs
    against both."""
    if request.param == "standalone":
        return STANDALONE
    cluster: PrivateCluster = request.getfixturevalue("redis_cluster")
    return cluster.target


@pytest.fixture(scope="session")
def gateway_process_env(log_database_url: str) -> dict[str, str]:
    """Environment for gateway processes: this session's database and cache namespace,
    so runs never see each other's cached answers or rows. API keys are off: these
    processes test other things; tests/test_auth_*.py test keys and limits."""
    return {
        "GATEWAY_LOG_DATABASE_URL": log_database_url,
        "GATEWAY_CACHE_NAMESPACE": f"test-{uuid.uuid4().hex[:10]}",
        "GATEWAY_AUTH_ENABLED": "false",
    }


@pytest.fixture(scope="session")
async def fake_worker() -> AsyncIterator[FakeWorker]:
    worker = FakeWorker()
    async with serve(worker.app()) as url:
        worker.url = url
        yield worker


@pytest.fixture(scope="session")
async def fake_gateway(fake_worker: FakeWorker) -> AsyncIterator[str]:
    """A gateway in front of the fake worker, with short timeouts."""
    async with run_gateway(fake_worker.url, first_byte_timeout_s=1.0, total_timeout_s=2.0) as url:
        yield url


@pytest.fixture(scope="session")
async def gateway_url(worker_url: str) -> AsyncIterator[str]:
    """A gateway in front of the real worker."""
    async with run_gateway(worker_url) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
