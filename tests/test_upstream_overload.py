"""Issue 24: overload sheds, it does not queue.

A request that needs a worker whose queue is past GATEWAY_ADMISSION_MAX_WAITING gets our
503 `overloaded` with Retry-After at once, also in a burst the worker has not reported
yet (the replica counts its own requests in flight), while cache hits keep flowing. The
scripted fake worker reports no load at all: only the replica's own count can see it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

CHAT = "/v1/chat/completions"


async def test_a_burst_past_the_bound_is_shed_at_once_and_hits_keep_flowing(
    fake_worker: FakeWorker,
) -> None:
    hot = f"is this bag real leather {uuid.uuid4().hex}"
    fake_worker.scripts[hot] = "fake:say:It is."
    async with (
        run_gateway(
            fake_worker.url,
            cache_enabled=True,
            cache_namespace=f"test-shed-{uuid.uuid4().hex[:8]}",
            admission_max_waiting=2,
            retry_after_s=3,
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        assert (await client.post(CHAT, json=chat_body(hot, temperature=0))).status_code == 200
        slow = [f"fake:sleep:2 {uuid.uuid4().hex}" for _ in range(3)]
        for prompt in slow:
            fake_worker.scripts[prompt] = "fake:sleep:2"
        # Three in flight: with nothing reported as running, all three count as queued.
        busy = [
            asyncio.create_task(client.post(CHAT, json=chat_body(p, temperature=0))) for p in slow
        ]
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        shed = await client.post(CHAT, json=chat_body(f"another {uuid.uuid4().hex}"))
        assert time.perf_counter() - started < 1.0, "shed at once, not queued"
        assert shed.status_code == 503
        assert shed.json()["error"]["code"] == "overloaded"
        assert shed.headers["retry-after"] == "3"
        for _ in range(5):  # the hot question needs no worker
            hit = await client.post(CHAT, json=chat_body(hot, temperature=0))
            assert (hit.status_code, hit.headers["x-cache"]) == (200, "hit")
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * 3
        served = await client.post(CHAT, json=chat_body(f"later {uuid.uuid4().hex}"))
        assert served.status_code == 200
