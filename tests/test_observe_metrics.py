"""The gateway series the dashboards and alerts need: bounded per-key labels, zeros
exported before anything fails, inter-token gaps, the spool's oldest record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.interactions.spool import Spool
from gateway.metrics import MAX_KEY_LABELS, OTHER_KEYS, Metrics
from gateway.streams import GapTimer


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
