"""Helpers for the API-key and rate-limit tests: keys made with the real CLI, gateways
that require them."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import SecretStr

from gateway.auth import AuthSettings
from gateway.auth.cli import main as keys_cli
from gateway.ratelimit import RateLimitSettings
from tests.support.servers import run_gateway


def run_cli(database_url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = keys_cli(["--url", database_url, *args], out=out)
    return code, out.getvalue()


def create_key(database_url: str, *options: str, name: str = "test") -> str:
    code, out = run_cli(database_url, "create", "--name", name, *options)
    assert code == 0, out
    return out.strip()


def key_id(key: str) -> str:
    return key.split("-")[1]


def secret_of(key: str) -> str:
    """The secret part (url-safe base64, which may itself hold "-")."""
    return key.split("-", 2)[2]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def keyed_gateway(
    worker_url: str,
    database_url: str,
    *,
    namespace: str | None = None,
    refresh_s: float = 0.5,
    ratelimit: RateLimitSettings | None = None,
    **overrides: Any,
) -> AsyncIterator[str]:
    """An in-process gateway that requires keys from ``database_url``."""
    auth = AuthSettings(database_url=SecretStr(database_url), refresh_s=refresh_s)
    async with run_gateway(
        worker_url,
        auth=auth,
        # Redis answers within 0.1 s (the default) on a quiet machine; these gateways test
        # limits, not time-outs, and one slow answer must not fail them open on a busy one.
        ratelimit=ratelimit or RateLimitSettings(socket_timeout_s=2.0),
        cache_namespace=namespace or f"test-auth-{uuid.uuid4().hex[:8]}",
        **overrides,
    ) as url:
        yield url
