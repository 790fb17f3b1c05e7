"""Shared fixtures: one real vLLM CPU worker (cpu-tiny) per test session.

Set VLM_TEST_WORKER_URL to reuse a worker that is already running (faster
local iterations); otherwise the session starts its own on a free port through
the same launcher `make worker` uses, and stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from gateway.db.migrate import upgrade
from localstack.processes import StartError, start_worker
from tests.mariadb_fixtures import shared_database
from worker.profiles import REPO_ROOT

LOG_DIR = REPO_ROOT / ".run" / "test-logs"
TINY_MODEL_NAME = "qwen3-vl-tiny"
WORKER_STARTUP_TIMEOUT_S = 600.0


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
def log_database_url() -> Iterator[str]:
    """A migrated interaction-log database of this session's own, dropped at the end."""
    with shared_database() as url:
        upgrade(url)
        yield url


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
