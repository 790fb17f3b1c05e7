"""Reading server-sent events as a client would, with each event's arrival time."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Stream:
    headers: httpx.Headers
    events: list[str] = field(default_factory=list)  # each `data:` payload
    arrivals: list[float] = field(default_factory=list)  # perf_counter() per event


async def read_stream(base_url: str, body: dict[str, Any]) -> Stream:
    """POST a streamed chat completion; fails unless it answers 200 with SSE."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response.headers)
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                stream.arrivals.append(time.perf_counter())
                stream.events.append(line[len("data: ") :])
    return stream


def assert_arrived_incrementally(arrivals: list[float]) -> None:
    """A buffered response delivers every event in one burst (gaps of microseconds);
    generated tokens arrive one decode step apart."""
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    spaced = [g for g in gaps if g > 0.0002]
    assert len(spaced) >= len(gaps) // 2, f"events came in bursts: {gaps}"
    assert arrivals[-2] - arrivals[0] > 0.02
