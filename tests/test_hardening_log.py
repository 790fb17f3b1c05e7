"""Issue 15, section 3: log rows are never merged silently; the client IP is only taken
from X-Real-IP when the peer is a trusted proxy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_log_engine
from gateway.db.migrate import upgrade
from gateway.interactions.middleware import client_ip, log_key
from gateway.interactions.records import RowPolicy, to_row
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.spool import Spool
from tests.support.interactions import make, metric, running, settings_for
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
    """A row MySQL already holds is stored once and counted in
    gateway_interactions_duplicates_total, by the path that sent it again."""
    settings = settings_for(db_url, tmp_path / "spool.jsonl")
    key = f"dup-{uuid.uuid4().hex}"
    async with running(engine, settings) as (writer, metrics):
        writer.submit(make(key))
        await writer.flush()
        assert metric(metrics, "duplicates", "direct") == 0
        # The same key again on the direct path: a collision that would merge two rows.
        writer.submit(make(key, answer="another interaction"))
        writer.submit(make(f"{key}-other"))
        await writer.flush()
        assert metric(metrics, "written", "direct") == 3
        assert metric(metrics, "duplicates", "direct") == 1
        assert metric(metrics, "duplicates", "replay") == 0
    # A spool holding a row MySQL already has (a crash after the insert): a replay no-op.
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    spool.open()
    rows = [to_row(make(key), RowPolicy()), to_row(make(f"{key}-new"), RowPolicy())]
    spool.append(rows, sync=True)
    spool.close()
    async with running(engine, settings) as (writer, metrics):
        assert await writer.drain_spool()
        assert metric(metrics, "written", "replay") == 2
        assert metric(metrics, "duplicates", "replay") == 1
        assert metric(metrics, "duplicates", "direct") == 0


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
