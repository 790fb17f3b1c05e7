"""A busy gateway never takes a healthy worker for a dead one.

A health check's timeout is a timer on the same event loop that reads the worker's answer.
When the loop is held longer than the timeout (a burst of work; on a small machine, a
generating Triton worker can keep a co-located gateway off the CPU for seconds), an answer
that arrived in a millisecond was read after the timer had fired: the worker was marked
down, its streams were cut and new requests got 503 until a check passed. The timeout now
counts only time the loop was responsive (gateway/loop_lag.py), as Redis deadlines do.
tests/test_upstream_routing.py checks that a worker that really stops answering (SIGSTOP)
is still marked down within its bounds.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

STALL_S = 0.3  # three health timeouts, on every health check
HEALTH_TIMEOUT_S = 0.1


async def test_a_stalled_loop_neither_marks_the_worker_down_nor_cuts_its_stream(
    fake_worker: FakeWorker,
) -> None:
    fake_worker.health_stall_s = STALL_S
    try:
        async with (
            run_gateway(
                fake_worker.url, health_interval_s=0.05, health_timeout_s=HEALTH_TIMEOUT_S
            ) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as client,
        ):
            body = chat_body("fake:pace:100:20", stream=True)
            streamed = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            statuses = []
            while not streamed.done():
                response = await client.post("/v1/chat/completions", json=chat_body("hello"))
                statuses.append(response.status_code)
            stream = await streamed
            metrics = (await client.get("/metrics")).text
    finally:
        fake_worker.health_stall_s = 0.0
    assert statuses
    assert set(statuses) == {200}, statuses
    assert stream.status_code == 200, stream.text
    assert '"error"' not in stream.text
    assert stream.text.rstrip().endswith("data: [DONE]")
    assert stream.text.count('"content"') >= 20
    healthy = [line for line in metrics.splitlines() if line.startswith("gateway_worker_healthy")]
    assert healthy == [f'gateway_worker_healthy{{worker="{fake_worker.url}"}} 1.0'], healthy
