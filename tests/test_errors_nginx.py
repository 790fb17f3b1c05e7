"""A request id Nginx and the gateway cannot use (issue 27): both replace it with the
same new id, the response says so, and Nginx's access log holds the id the gateway used
beside the one the caller sent. Real Nginx from our template, in front of a gateway on
the fake worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstack.processes import start_nginx
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway


@pytest.fixture
async def nginx(fake_worker: FakeWorker, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    async with run_gateway(fake_worker.url) as gateway:
        upstream = gateway.removeprefix("http://")
        # start_nginx waits for /readyz, which this loop must serve meanwhile.
        process = await asyncio.to_thread(start_nginx, [upstream], tmp_path)
        try:
            yield process.url, tmp_path / f"nginx-{process.port}" / "nginx-access.json"
        finally:
            await asyncio.to_thread(process.stop)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _logged(log: Path, request_id: str) -> dict[str, Any]:
    for _ in range(100):  # nginx writes the line once the response is sent
        for line in await asyncio.to_thread(_lines, log):
            entry: dict[str, Any] = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
        await asyncio.sleep(0.05)
    raise AssertionError(f"{request_id} not in nginx's access log")


async def test_nginx_and_the_gateway_agree_on_a_replaced_id(
    nginx: tuple[str, Path], http: httpx.AsyncClient
) -> None:
    url, log = nginx
    sent = "not a usable id " + "x" * 200
    response = await http.post(
        url + "/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": sent}
    )
    assert response.status_code == 200, response.text
    used = response.headers["x-request-id"]
    assert used != sent
    assert response.headers["x-request-id-replaced"] == "true"
    entry = await _logged(log, used)
    assert entry["request_id_sent"] == sent

    kept = await http.post(
        url + "/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "trace-7"}
    )
    assert kept.headers["x-request-id"] == "trace-7"
    assert "x-request-id-replaced" not in kept.headers
    assert (await _logged(log, "trace-7"))["request_id_sent"] == "trace-7"
