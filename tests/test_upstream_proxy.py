"""Forwarding against a fake worker: error mapping, timeouts, streaming, disconnects."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest

from gateway.protocol import ErrorResponse
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import b64, image_bytes
from tests.support.metrics import scrape, total
from tests.support.requests import chat_body, vqa_body
from tests.support.servers import run_gateway, serve


def _error_code(response: httpx.Response) -> str | None:
    return ErrorResponse.model_validate_json(response.content).error.code


async def _events(response: httpx.Response) -> list[tuple[float, bytes]]:
    """(arrival time, event) for each SSE event, timed when its bytes arrive."""
    events: list[tuple[float, bytes]] = []
    buffer = b""
    async for chunk in response.aiter_raw():
        now = time.perf_counter()
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.append((now, event))
    return events


@pytest.mark.parametrize(("status", "expected"), [(400, 400), (404, 404), (422, 422), (429, 429)])
async def test_worker_4xx_passes_through_in_our_shape(
    status: int, expected: int, fake_gateway: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions", json=chat_body(f"fake:status:{status}")
    )
    assert response.status_code == expected
    error = ErrorResponse.model_validate_json(response.content).error
    assert (error.code, error.message, error.param) == ("upstream_rejected", "worker says no", "x")


@pytest.mark.parametrize("stream", [False, True])
async def test_worker_5xx_is_502(stream: bool, fake_gateway: str, http: httpx.AsyncClient) -> None:
    body = chat_body("fake:status:500", stream=stream)
    response = await http.post(f"{fake_gateway}/v1/chat/completions", json=body)
    assert response.status_code == 502
    assert _error_code(response) == "upstream_error"


async def test_malformed_worker_answer_is_502(fake_gateway: str, http: httpx.AsyncClient) -> None:
    png = b64(image_bytes())
    response = await http.post(f"{fake_gateway}/v1/vqa", json=vqa_body(png, "fake:garbage"))
    assert response.status_code == 502


async def test_total_timeout_is_504(fake_gateway: str, http: httpx.AsyncClient) -> None:
    # fake_gateway: total_timeout_s=2.0
    started = time.perf_counter()
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions", json=chat_body("fake:sleep:5")
    )
    assert response.status_code == 504
    assert _error_code(response) == "upstream_timeout"
    assert time.perf_counter() - started < 4


async def test_first_byte_timeout_is_504(fake_gateway: str, http: httpx.AsyncClient) -> None:
    # fake_gateway: first_byte_timeout_s=1.0; the fake waits 3 s before its first chunk.
    started = time.perf_counter()
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions", json=chat_body("fake:sleep:3", stream=True)
    )
    assert response.status_code == 504
    assert time.perf_counter() - started < 2.5


async def test_stall_mid_stream_ends_with_an_error_event(
    fake_gateway: str, http: httpx.AsyncClient
) -> None:
    body = chat_body("fake:stall:2", stream=True)
    async with http.stream("POST", f"{fake_gateway}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [event for _, event in await _events(response)]
    assert len(events) == 4
    error = ErrorResponse.model_validate_json(events[2].removeprefix(b"data: ")).error
    assert error.code == "upstream_timeout"
    assert events[3] == b"data: [DONE]"


async def test_stream_chunks_are_forwarded_as_they_come(
    fake_gateway: str, http: httpx.AsyncClient
) -> None:
    # The fake sends a chunk every 80 ms; buffering anywhere would bunch them up.
    body = chat_body("fake:pace:80:8", stream=True)
    started = time.perf_counter()
    async with http.stream("POST", f"{fake_gateway}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        events = await _events(response)
    arrivals = [t for t, event in events if event != b"data: [DONE]"]
    assert len(arrivals) == 8
    assert arrivals[0] - started < 0.3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.04, gaps
    assert max(gaps) < 0.3, gaps


async def test_client_disconnect_mid_stream_closes_the_upstream(
    fake_gateway: str, fake_worker: FakeWorker
) -> None:
    before = fake_worker.disconnects
    body = chat_body("fake:pace:50:100", stream=True)
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", f"{fake_gateway}/v1/chat/completions", json=body) as response,
    ):
        async for _ in response.aiter_raw():
            break  # one chunk, then hang up
    for _ in range(100):
        if fake_worker.disconnects > before:
            break
        await asyncio.sleep(0.02)
    assert fake_worker.disconnects == before + 1


async def test_client_disconnect_while_waiting_cancels_the_upstream(
    fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    before = fake_worker.disconnects
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            f"{fake_gateway}/v1/chat/completions",
            json=chat_body("fake:hold:1.5"),
            timeout=0.3,
        )
    for _ in range(100):
        if fake_worker.disconnects > before:
            break
        await asyncio.sleep(0.02)
    assert fake_worker.disconnects == before + 1
    samples = await scrape(http, fake_gateway)
    assert total(samples, "gateway_client_disconnects_total") >= 1
    assert total(samples, "gateway_requests_total", lambda k: 'status="499"' in k) >= 1


async def test_refused_connection_is_503_and_readiness_follows(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    worker_server = serve(worker.app())
    worker_url = await worker_server.__aenter__()
    stopped = False
    try:
        async with run_gateway(worker_url, health_interval_s=0.1) as gateway:
            assert (await http.get(f"{gateway}/readyz")).status_code == 200
            ok = await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
            assert ok.status_code == 200
            # The worker goes away: its port now refuses connections.
            await worker_server.__aexit__(None, None, None)
            stopped = True
            response = await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
            assert response.status_code == 503
            assert _error_code(response) == "upstream_unavailable"
            await asyncio.sleep(0.3)
            # Still ready: the replica serves what needs no worker (cached answers).
            ready = await http.get(f"{gateway}/readyz")
            assert ready.status_code == 200
            assert ready.json()["healthy_workers"] == 0
            wanting = await http.get(f"{gateway}/readyz?min_workers=1")
            assert wanting.status_code == 503
            assert _error_code(wanting) == "no_healthy_worker"
            assert wanting.headers["retry-after"] == "1"
            samples = await scrape(http, gateway)
            assert total(samples, "gateway_upstream_errors_total", lambda k: "connect" in k) == 1
            assert total(samples, "gateway_worker_healthy") == 0
    finally:
        if not stopped:
            await worker_server.__aexit__(None, None, None)


async def test_round_robin_over_healthy_workers(http: httpx.AsyncClient) -> None:
    first, second = FakeWorker(), FakeWorker()
    async with serve(first.app()) as a, serve(second.app()) as b, run_gateway(a, b) as gateway:
        for _ in range(4):
            response = await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
            assert response.status_code == 200
        assert (len(first.requests), len(second.requests)) == (2, 2)
        first.health_status = 503
        await asyncio.sleep(0.7)  # a health poll (every 0.5 s) notices
        for _ in range(2):
            await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
        assert (len(first.requests), len(second.requests)) == (2, 4)
        assert (await http.get(f"{gateway}/readyz")).json()["healthy_workers"] == 1


async def test_worker_api_key_is_sent(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    async with serve(worker.app()) as url, run_gateway(url, worker_api_key="s3cret") as gateway:
        await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
    assert worker.requests[0][0]["authorization"] == "Bearer s3cret"


async def test_no_worker_at_all(http: httpx.AsyncClient) -> None:
    async with run_gateway("http://127.0.0.1:9", health_timeout_s=0.2) as gateway:
        assert (await http.get(f"{gateway}/readyz")).json() == {
            "status": "ready", "healthy_workers": 0, "total_workers": 1,
        }  # fmt: skip
        assert (await http.get(f"{gateway}/readyz?min_workers=1")).status_code == 503
        assert (await http.get(f"{gateway}/readyz?min_workers=-1")).status_code == 400
        assert (await http.get(f"{gateway}/v1/models")).status_code == 503
        response = await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
        assert response.status_code == 503
        assert json.loads(response.content)["error"]["code"] == "no_healthy_worker"
