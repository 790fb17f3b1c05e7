"""The worker pool against fake workers: load-aware choice, image affinity, retries,
passive ejection with half-open probes, admission control, all workers down, a worker
dying mid-stream, and a slow worker behind the fault-injecting proxy."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.interactions.settings import InteractionLogSettings
from gateway.protocol import ErrorResponse
from gateway.upstream.load import parse_load
from localstack.fault_proxy import FaultProxy
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import data_uri, image_bytes
from tests.support.mariadb import logged_rows
from tests.support.metrics import scrape, total
from tests.support.requests import chat_body, image_chat_body
from tests.support.servers import run_gateway, serve

CHAT = "/v1/chat/completions"


@dataclass
class LoadedWorker(FakeWorker):
    """A FakeWorker that reports vLLM's load gauges and can answer every chat with a status."""

    running: float = 0.0
    waiting: float = 0.0
    chat_status: int | None = None
    hang: bool = False

    def app(self) -> Starlette:
        app = super().app()
        app.router.routes.append(Route("/metrics", self._metrics))
        return app

    async def _metrics(self, _: Request) -> Response:
        text = (
            "# HELP vllm:num_requests_running x\n"
            f'vllm:num_requests_running{{engine="0",model_name="m"}} {self.running}\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {self.waiting}\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.25\n'
        )
        return Response(text, media_type="text/plain")

    async def _chat(self, request: Request) -> Response:
        if self.hang:
            self.requests.append((dict(request.headers), {}))
            await asyncio.sleep(30)
        if self.chat_status is not None:
            self.requests.append((dict(request.headers), {}))
            return Response(b'{"error": {"message": "busy"}}', status_code=self.chat_status)
        return await super()._chat(request)


def _code(response: httpx.Response) -> str | None:
    return ErrorResponse.model_validate_json(response.content).error.code


def _image_body(seed: int) -> dict[str, object]:
    png = image_bytes(size=(32 + seed, 32))
    return image_chat_body("what is it?", data_uri(png))


def test_parse_load_sums_label_sets() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0"} 2.0\n'
        'vllm:num_requests_running{engine="1"} 1.0\n'
        'vllm:num_requests_waiting{engine="0"} 4.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
        "vllm:num_requests_running_other 9\n"
    )
    assert parse_load(text) == (3.0, 4.0, 0.5)
    assert parse_load("up 1\n") is None


async def test_least_loaded_worker_is_chosen(http: httpx.AsyncClient) -> None:
    busy, idle = LoadedWorker(waiting=8), LoadedWorker()
    async with serve(busy.app()) as a, serve(idle.app()) as b, run_gateway(a, b) as gateway:
        for _ in range(6):
            assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
        assert (len(busy.requests), len(idle.requests)) == (0, 6)
        samples = await scrape(http, gateway)
        assert total(samples, "gateway_worker_load", lambda k: "waiting" in k) == 8


async def test_image_affinity_sticks_then_yields_to_load(http: httpx.AsyncClient) -> None:
    first, second = LoadedWorker(), LoadedWorker()
    async with (
        serve(first.app()) as a,
        serve(second.app()) as b,
        run_gateway(a, b, health_interval_s=0.1) as gateway,
    ):
        # Repeats of one photo meet one worker; different photos spread over both.
        # (16 photos: all on one worker by chance would be a 1 in 32768 event.)
        for seed in range(16):
            for _ in range(2):
                response = await http.post(f"{gateway}{CHAT}", json=_image_body(seed))
                assert response.status_code == 200
        counts = (len(first.requests), len(second.requests))
        assert sum(counts) == 32
        assert all(c % 2 == 0 for c in counts)
        assert min(counts) > 0
        # The affine worker of photo 0 becomes much busier than the other: load wins.
        before = (len(first.requests), len(second.requests))
        await http.post(f"{gateway}{CHAT}", json=_image_body(0))
        affine = first if len(first.requests) > before[0] else second
        affine.waiting = 20
        await asyncio.sleep(0.3)
        other = second if affine is first else first
        before_other = len(other.requests)
        for _ in range(3):
            assert (await http.post(f"{gateway}{CHAT}", json=_image_body(0))).status_code == 200
        assert len(other.requests) == before_other + 3
        samples = await scrape(http, gateway)
        assert total(samples, "gateway_worker_choices_total", lambda k: "overflow" in k) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_503_is_retried_on_another_worker(stream: bool, http: httpx.AsyncClient) -> None:
    failing, good = LoadedWorker(chat_status=503), LoadedWorker()
    async with (
        serve(failing.app()) as a,
        serve(good.app()) as b,
        run_gateway(a, b, upstream_retry_jitter_s=0.01) as gateway,
    ):
        for _ in range(4):
            response = await http.post(f"{gateway}{CHAT}", json=chat_body(stream=stream))
            assert response.status_code == 200
        assert len(good.requests) == 4
        assert len(failing.requests) >= 1
        samples = await scrape(http, gateway)
        retries = total(samples, "gateway_upstream_retries_total")
        assert retries == len(failing.requests)


async def test_log_row_counts_the_attempts(http: httpx.AsyncClient, log_database_url: str) -> None:
    failing, good = LoadedWorker(chat_status=503), LoadedWorker()
    log = InteractionLogSettings(database_url=SecretStr(log_database_url), flush_interval_s=0.05)
    async with (
        serve(failing.app()) as a,
        serve(good.app()) as b,
        run_gateway(a, b, upstream_retry_jitter_s=0, affinity_enabled=False, log=log) as gateway,
    ):
        ids = [f"attempts-{uuid.uuid4().hex}" for _ in range(4)]
        for request_id in ids:
            headers = {"X-Request-ID": request_id}
            response = await http.post(f"{gateway}{CHAT}", json=chat_body(), headers=headers)
            assert response.status_code == 200
    rows = [(await asyncio.to_thread(logged_rows, log_database_url, i))[0] for i in ids]
    assert {row["worker_id"] for row in rows} == {b}
    # Each request that met the failing worker first took a second attempt.
    assert sorted(row["upstream_attempts"] for row in rows) == sorted(
        [2] * len(failing.requests) + [1] * (4 - len(failing.requests))
    )
    assert len(failing.requests) >= 1


async def test_breaker_ejects_then_half_open_probe_readmits(http: httpx.AsyncClient) -> None:
    flaky, good = LoadedWorker(chat_status=503), LoadedWorker()
    async with (
        serve(flaky.app()) as a,
        serve(good.app()) as b,
        run_gateway(
            a, b, worker_breaker_failures=2, worker_breaker_open_s=0.5, upstream_retry_jitter_s=0
        ) as gateway,
    ):
        for _ in range(10):
            assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
        # Two failures opened its breaker; no more attempts went to it.
        assert len(flaky.requests) == 2
        samples = await scrape(http, gateway)
        assert total(samples, "gateway_worker_breaker_state", lambda k: a in k) == 1
        # It recovers; after the open window one request probes it and readmits it.
        flaky.chat_status = None
        await asyncio.sleep(0.6)
        for _ in range(6):
            assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
        assert len(flaky.requests) >= 4
        samples = await scrape(http, gateway)
        assert total(samples, "gateway_worker_breaker_state", lambda k: a in k) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_request_on_a_hung_worker_moves_when_its_health_check_fails(
    stream: bool, http: httpx.AsyncClient
) -> None:
    hung, good = LoadedWorker(hang=True), LoadedWorker(waiting=5)
    async with (
        serve(hung.app()) as a,
        serve(good.app()) as b,
        run_gateway(a, b, health_interval_s=0.1, health_timeout_s=0.2) as gateway,
    ):
        await asyncio.sleep(0.3)  # both polled: the hung one looks least loaded

        async def later() -> None:
            await asyncio.sleep(0.5)
            hung.health_status = 503  # what a SIGSTOPped worker's health check amounts to

        flip = asyncio.create_task(later())
        started = time.perf_counter()
        response = await http.post(f"{gateway}{CHAT}", json=chat_body(stream=stream))
        await flip
        assert response.status_code == 200
        assert time.perf_counter() - started < 2.0
        assert (len(hung.requests), len(good.requests)) == (1, 1)
        samples = await scrape(http, gateway)
        assert total(samples, "gateway_upstream_retries_total", lambda k: "ejected" in k) == 1


async def test_admission_control_sheds_with_retry_after(http: httpx.AsyncClient) -> None:
    first, second = LoadedWorker(waiting=30), LoadedWorker(waiting=12)
    async with (
        serve(first.app()) as a,
        serve(second.app()) as b,
        run_gateway(a, b, admission_max_waiting=10, retry_after_s=2) as gateway,
    ):
        response = await http.post(f"{gateway}{CHAT}", json=chat_body())
        assert response.status_code == 503
        assert _code(response) == "overloaded"
        assert response.headers["retry-after"] == "2"
        assert not first.requests
        assert not second.requests
        second.waiting = 3
        await asyncio.sleep(0.7)
        assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
        assert len(second.requests) == 1


async def test_all_workers_down_fast_503_then_recovery(http: httpx.AsyncClient) -> None:
    first, second = LoadedWorker(), LoadedWorker()
    async with serve(first.app()) as a, serve(second.app()) as b:
        pa, pb = int(a.rsplit(":", 1)[1]), int(b.rsplit(":", 1)[1])
        async with (
            FaultProxy("127.0.0.1", pa) as proxy_a,
            FaultProxy("127.0.0.1", pb) as proxy_b,
            run_gateway(proxy_a.url, proxy_b.url, health_interval_s=0.2) as gateway,
        ):
            assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
            await proxy_a.stop_listening()
            await proxy_b.stop_listening()
            for _ in range(6):
                started = time.perf_counter()
                response = await http.post(f"{gateway}{CHAT}", json=chat_body())
                assert time.perf_counter() - started < 0.5
                assert response.status_code == 503
                assert _code(response) in ("upstream_unavailable", "no_healthy_worker")
                assert response.headers["retry-after"] == "1"
            await asyncio.sleep(0.3)
            # The replica stays ready (it still serves cached answers); only a caller that
            # asks for a healthy worker is told there is none.
            assert (await http.get(f"{gateway}/readyz")).status_code == 200
            assert (await http.get(f"{gateway}/readyz?min_workers=1")).status_code == 503
            await proxy_b.listen()
            deadline = time.monotonic() + 10
            while (await http.get(f"{gateway}/readyz?min_workers=1")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            for _ in range(3):
                assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200


async def test_worker_dying_mid_stream_ends_with_sse_error(http: httpx.AsyncClient) -> None:
    worker = LoadedWorker()
    async with (
        serve(worker.app()) as a,
        FaultProxy("127.0.0.1", int(a.rsplit(":", 1)[1])) as proxy,
        run_gateway(proxy.url) as gateway,
    ):
        body = chat_body("fake:pace:100:30", stream=True)
        async with http.stream("POST", f"{gateway}{CHAT}", json=body) as response:
            assert response.status_code == 200
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                if received.count(b"data: ") == 2:
                    proxy.cut()
        events = [e for e in received.split(b"\n\n") if e.strip()]
        # Our error event, then the end of the stream, as for every error after the start.
        assert events[-1] == b"data: [DONE]"
        last = ErrorResponse.model_validate_json(events[-2].removeprefix(b"data: "))
        assert last.error.code == "upstream_error"
        assert len(events) < 10
        assert len(worker.requests) == 1  # a started stream is never retried


async def _sse_events(http: httpx.AsyncClient, url: str, body: dict[str, object]) -> list[bytes]:
    async with http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        received = await response.aread()
    return [e for e in received.split(b"\n\n") if e.strip()]


async def test_started_stream_on_a_worker_that_fails_health_checks_ends_with_an_error(
    http: httpx.AsyncClient,
) -> None:
    worker = LoadedWorker()
    async with (
        serve(worker.app()) as a,
        run_gateway(a, health_interval_s=0.1, health_timeout_s=0.2) as gateway,
    ):

        async def later() -> None:
            await asyncio.sleep(0.5)
            worker.health_status = 503

        flip = asyncio.create_task(later())
        events = await _sse_events(http, f"{gateway}{CHAT}", chat_body("fake:stall:2", stream=True))
        await flip
    assert events[-1] == b"data: [DONE]"
    error = ErrorResponse.model_validate_json(events[-2].removeprefix(b"data: ")).error
    assert error.code == "upstream_unavailable"
    assert len(events) == 4  # two chunks, the error, [DONE]


async def test_started_stream_that_goes_silent_ends_after_the_idle_timeout(
    http: httpx.AsyncClient,
) -> None:
    worker = LoadedWorker()
    async with (
        serve(worker.app()) as a,
        run_gateway(a, stream_idle_timeout_s=0.3) as gateway,
    ):
        events = await _sse_events(http, f"{gateway}{CHAT}", chat_body("fake:stall:2", stream=True))
        # The worker stays healthy: the stream still ends, and the next one is served.
        assert (await http.post(f"{gateway}{CHAT}", json=chat_body())).status_code == 200
    error = ErrorResponse.model_validate_json(events[-2].removeprefix(b"data: ")).error
    assert (error.code, error.message) == (
        "upstream_timeout",
        "The worker stopped sending its answer.",
    )


async def test_slow_worker_loses_traffic(http: httpx.AsyncClient) -> None:
    slow, fast = LoadedWorker(), LoadedWorker()
    async with (
        serve(slow.app()) as a,
        serve(fast.app()) as b,
        FaultProxy("127.0.0.1", int(a.rsplit(":", 1)[1])) as proxy,
        run_gateway(proxy.url, b, affinity_enabled=False) as gateway,
    ):
        proxy.delay_s = 0.3
        served: collections.Counter[str] = collections.Counter()

        async def client() -> None:
            for _ in range(6):
                body = chat_body(stream=True)
                async with http.stream("POST", f"{gateway}{CHAT}", json=body) as response:
                    assert response.status_code == 200
                    await response.aread()

        before = len(slow.requests)
        await asyncio.gather(*(client() for _ in range(4)))
        served["slow"] = len(slow.requests) - before
        served["fast"] = len(fast.requests)
        assert served["slow"] + served["fast"] == 24
        assert served["fast"] >= 18, served
