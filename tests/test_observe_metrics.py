"""The gateway series the dashboards and alerts need: bounded per-key labels, zeros
exported before anything fails, inter-token gaps, the spool's oldest record and rows,
requests counted by how they ended (a stream that fails after its 200, a client that
left), non-streamed answer latency apart from TTFT, each worker's pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.interactions.middleware import outcome
from gateway.interactions.spool import Spool
from gateway.metrics import MAX_KEY_LABELS, OTHER_KEYS, Metrics
from gateway.streams import GapTimer
from localstack.fault_proxy import FaultProxy
from tests.doubles.fake_worker import FakeWorker
from tests.support.images import data_uri, image_bytes
from tests.support.metrics import scrape
from tests.support.requests import chat_body, vqa_body
from tests.support.servers import run_gateway, serve

CHAT = "/v1/chat/completions"


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_key_labels_are_bounded() -> None:
    metrics = Metrics()
    labels = [metrics.key_label(f"k{i}") for i in range(MAX_KEY_LABELS + 5)]
    assert labels[:MAX_KEY_LABELS] == [f"k{i}" for i in range(MAX_KEY_LABELS)]
    assert labels[MAX_KEY_LABELS:] == [OTHER_KEYS] * 5
    assert metrics.key_label("k3") == "k3"  # a key keeps its label


def test_failure_series_exist_at_zero() -> None:
    samples = _samples(Metrics())
    assert samples[("gateway_rate_limiter_errors_total", (("limit", "tokens"),))] == 0
    assert samples[("gateway_upstream_errors_total", (("kind", "connect"),))] == 0
    assert samples[("gateway_cache_errors_total", (("operation", "get"),))] == 0


def test_worker_series_follow_the_pool() -> None:
    metrics = Metrics()
    metrics.worker_joined("http://w1", "canary")
    key = (
        "gateway_worker_requests_total",
        (("outcome", "error"), ("pool", "canary"), ("worker", "http://w1")),
    )
    assert _samples(metrics)[key] == 0
    metrics.worker_left("http://w1", "canary")
    assert key not in _samples(metrics)


class _Chunks:
    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.closed = False

    async def _gen(self) -> AsyncIterator[bytes]:
        for delay in self.delays:
            await asyncio.sleep(delay)
            yield b"data: x\n\n"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    def close(self) -> None:
        self.closed = True


async def test_gap_timer_reports_gaps_between_chunks() -> None:
    gaps: list[float] = []
    inner = _Chunks([0.0, 0.02, 0.0])
    timer = GapTimer(inner, gaps.append)
    chunks = [chunk async for chunk in timer]
    assert len(chunks) == 3
    assert len(gaps) == 2  # n chunks, n - 1 gaps: the first chunk's wait is TTFT
    assert gaps[0] >= 0.02
    timer.close()
    assert inner.closed


def test_spool_oldest_age(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20, fsync=False)
    spool.open()
    try:
        assert spool.oldest_age_s() == 0.0
        now_ms = int(time.time() * 1000)
        spool.append([{"request_id": "a", "received_at_ms": now_ms - 600_000}], sync=False)
        spool.append([{"request_id": "b", "received_at_ms": now_ms - 5_000}], sync=False)
        assert 599 <= spool.oldest_age_s() <= 700
        sealed = spool.rotate()
        assert sealed is not None
        # The replay has passed the first row: the second is now the oldest waiting.
        offset = sealed.read_bytes().index(b"\n") + 1
        assert 4 <= spool.oldest_age_s((sealed, offset)) <= 100
        spool.remove(sealed)
        assert spool.oldest_age_s() == 0.0
    finally:
        spool.close()


def test_spool_counts_the_rows_waiting(tmp_path: Path) -> None:
    """gateway_interactions_spool_rows: what a pod that ends now would take with it."""
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20, fsync=False)
    spool.open()
    try:
        spool.append([{"request_id": str(i), "received_at_ms": 1} for i in range(3)], sync=False)
        assert spool.rows == 3
        assert spool.rotate() is not None
        spool.append([{"request_id": "x", "received_at_ms": 1}], sync=False)
        chunk = spool.next_chunk(2)
        assert chunk is not None
        assert [row["request_id"] for row in chunk.rows] == ["0", "1"]
        assert spool.rows == 4  # not yet in MySQL
        spool.advance(chunk)
        assert spool.rows == 2
    finally:
        spool.close()
    reopened = Spool(tmp_path / "spool.jsonl", 1 << 20, fsync=False)
    reopened.open()  # a restart counts what it finds (the replay starts over: 3 + 1)
    try:
        assert reopened.rows == 4
        while chunk := reopened.next_chunk(10):
            reopened.advance(chunk)
        assert reopened.rows == 0
        assert reopened.bytes == 0
    finally:
        reopened.close()


def test_outcome_judges_a_stream_by_its_end() -> None:
    assert outcome(200, True, None) == "ok"
    assert outcome(200, True, "upstream_error") == "failed"  # an error event after the 200
    assert outcome(200, True, "content_policy_violation") == "rejected"
    assert outcome(200, False, "client_disconnected") == "abandoned"
    assert outcome(200, False, None) == "abandoned"
    assert outcome(499, True, "client_disconnected") == "abandoned"
    assert outcome(429, True, "rate_limit_exceeded") == "rejected"
    assert outcome(503, True, "no_healthy_worker") == "failed"
    assert outcome(200, True, "not_a_code_of_ours") == "failed"


def _outcomes(samples: dict[str, float], route: str = CHAT) -> dict[str, float]:
    prefix = "gateway_inference_outcomes_total{"
    return {
        key.split('outcome="')[1].split('"')[0]: value
        for key, value in samples.items()
        if key.startswith(prefix) and f'route="{route}"' in key
    }


async def test_requests_count_by_how_they_ended(http: httpx.AsyncClient) -> None:
    """A stream cut after its 200 is failed (gateway_requests_total still says 200), a client
    that leaves mid-stream is abandoned, a worker's 500 failed, a bad request rejected."""
    worker = FakeWorker()
    async with (
        serve(worker.app()) as direct,
        FaultProxy("127.0.0.1", int(direct.rsplit(":", 1)[1])) as proxy,
        run_gateway(proxy.url, cache_namespace="outcomes-ns") as gateway,
    ):
        before = await scrape(http, gateway)
        assert _outcomes(before) == {"ok": 0, "rejected": 0, "failed": 0, "abandoned": 0}
        assert before['gateway_cache_namespace_info{cache_namespace="outcomes-ns"}'] == 1
        assert before[f'gateway_worker_pool{{pool="default",worker="{proxy.url}"}}'] == 1

        assert (await http.post(f"{gateway}{CHAT}", json=chat_body("hi"))).status_code == 200
        assert (await http.post(f"{gateway}{CHAT}", json={"model": "x"})).status_code == 400
        failing = chat_body("fake:status:500")
        assert (await http.post(f"{gateway}{CHAT}", json=failing)).status_code >= 500
        streamed = chat_body("fake:pace:100:30", stream=True)
        async with http.stream("POST", f"{gateway}{CHAT}", json=streamed) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                if b"data: " in chunk:
                    proxy.cut()  # the worker dies after the first chunk
        async with http.stream("POST", f"{gateway}{CHAT}", json=streamed) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                if b"data: " in chunk:
                    break  # the client leaves
        vqa = vqa_body(data_uri(image_bytes()), "What is it?")
        assert (await http.post(f"{gateway}/v1/vqa", json=vqa)).status_code == 200

        deadline = asyncio.get_running_loop().time() + 5
        while True:  # the abandoned stream is counted once the gateway notices
            after = await scrape(http, gateway)
            if _outcomes(after)["abandoned"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    assert _outcomes(after) == {"ok": 1, "rejected": 1, "failed": 2, "abandoned": 1}
    assert _outcomes(after, "/v1/vqa")["ok"] == 1
    # What the status counter alone said: both streams were 200s.
    assert after[f'gateway_requests_total{{route="{CHAT}",status="200"}}'] == 3
    # Non-streamed successes only: one chat, one vqa; streams are TTFT's.
    answers = {
        key: value for key, value in after.items() if key.startswith("gateway_answer_seconds_count")
    }
    assert answers == {
        f'gateway_answer_seconds_count{{cache="bypass",route="{CHAT}"}}': 1,
        'gateway_answer_seconds_count{cache="bypass",route="/v1/vqa"}': 1,
    }
