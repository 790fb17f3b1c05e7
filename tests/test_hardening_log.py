"""Issue 15, section 3: log rows are never merged silently; the client IP is only taken
from X-Real-IP when the peer is a trusted proxy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_log_engine
from gateway.db.migrate import upgrade
from gateway.interactions import InteractionLogMetrics
from gateway.interactions.database import LogDatabase
from gateway.interactions.middleware import client_ip, log_key
from gateway.interactions.records import RowPolicy, to_row
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.spool import Spool
from tests.support.interactions import make, settings_for
from tests.support.mariadb import shared_database, shared_server_error


def test_a_reused_request_id_gets_a_suffix_no_collision_reaches() -> None:
    keys = {log_key("client-chosen-id") for _ in range(1000)}
    assert len(keys) == 1000
    suffix = next(iter(keys)).rsplit(".", 1)[1]
    assert len(suffix) * 4 >= 128  # bits: 32 bits collided ~116 times per million requests


def test_the_log_key_fits_the_column_whatever_the_request_id() -> None:
    assert len(log_key("x" * 500).encode()) <= 128


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    error = shared_server_error()
    if error is not None:
        pytest.fail(error)
    with shared_database("vlm_hardening") as url:
        upgrade(url)
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_log_engine(db_url, prepared_statements=True)
    yield engine
    await engine.dispose()


async def test_a_duplicate_key_no_op_is_counted(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_for(db_url, tmp_path / "spool.jsonl")
    metrics = InteractionLogMetrics(CollectorRegistry())
    database = LogDatabase(engine, settings, metrics, Spool(tmp_path / "s.jsonl", 1 << 20))
    policy = RowPolicy(prompt_max_chars=100, answer_max_chars=100, client_ip="full")
    first, second = (to_row(make(f"dup-{uuid.uuid4().hex}"), policy) for _ in range(2))
    assert await database.write([first]) == 0
    assert await database.write([first, second]) == 1  # `first` was there already
    assert await database.write([first, second]) == 2


# --- X-Real-IP ------------------------------------------------------------------------------


def _scope(peer: str, real_ip: str | None) -> dict[str, Any]:
    headers = [(b"x-real-ip", real_ip.encode())] if real_ip else []
    return {"type": "http", "headers": headers, "client": (peer, 50000)}


def test_x_real_ip_is_ignored_from_an_untrusted_peer() -> None:
    trusted = InteractionLogSettings().trusted_proxies
    assert client_ip(_scope("203.0.113.9", "198.51.100.1"), trusted) == "203.0.113.9"


def test_x_real_ip_is_read_from_a_trusted_proxy() -> None:
    trusted = InteractionLogSettings().trusted_proxies
    assert client_ip(_scope("127.0.0.1", "198.51.100.1"), trusted) == "198.51.100.1"
    assert client_ip(_scope("127.0.0.1", None), trusted) == "127.0.0.1"


def test_trusted_proxies_are_a_setting() -> None:
    settings = InteractionLogSettings.model_validate({"trusted_proxies": "10.0.0.0/8, 192.168.1.7"})
    scope = _scope("10.1.2.3", "198.51.100.1")
    assert client_ip(scope, settings.trusted_proxies) == "198.51.100.1"
    assert client_ip(_scope("192.168.1.8", "198.51.100.1"), settings.trusted_proxies) == (
        "192.168.1.8"
    )
