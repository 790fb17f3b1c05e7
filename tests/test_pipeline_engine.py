"""Through the gateway to a real vLLM CPU worker (cpu-tiny: random weights, noise answers).

Checks in the worker's own /metrics that bad inputs never reach it and that a client
hanging up aborts the generation.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import openai
import pytest

from tests.support.bad_requests import bad_cases
from tests.support.images import b64, data_uri, image_bytes
from tests.support.metrics import scrape, total
from tests.support.requests import MODEL, chat_body, image_chat_body, vqa_body

pytestmark = pytest.mark.engine

# With temperature 0 the tiny model answers this prompt without ever emitting an end token,
# so a generation of max_tokens lasts seconds: long enough to hang up in the middle.
LONG_PROMPT = "is this real leather"
CHAT_HANDLER = 'handler="/v1/chat/completions"'


async def _worker_chat_requests(http: httpx.AsyncClient, worker_url: str) -> float:
    """Chat requests the worker's HTTP server has seen (any status)."""
    return total(await scrape(http, worker_url), "http_requests_total", lambda k: CHAT_HANDLER in k)


async def _settled(read: Callable[[], Awaitable[float]]) -> float:
    """A counter's value once it stopped moving (the worker counts after responding)."""
    last = await read()
    for _ in range(50):
        await asyncio.sleep(0.05)
        now = await read()
        if now == last:
            return now
        last = now
    return last


async def _events(response: httpx.Response) -> list[tuple[float, int, bytes]]:
    """(arrival time, index of the network read, event) for each SSE event."""
    events: list[tuple[float, int, bytes]] = []
    buffer = b""
    reads = 0
    async for chunk in response.aiter_raw():
        now = time.perf_counter()
        reads += 1
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.append((now, reads, event))
    return events


async def test_models_and_readiness(gateway_url: str, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{gateway_url}/readyz")).status_code == 200
    models = (await http.get(f"{gateway_url}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


async def test_chat_completion_with_image(gateway_url: str, http: httpx.AsyncClient) -> None:
    png = image_bytes("PNG", (320, 240))
    body = image_chat_body("What is in this picture?", data_uri(png), max_tokens=8)
    response = await http.post(
        f"{gateway_url}/v1/chat/completions", json=body, headers={"X-Request-ID": "it-chat-1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "it-chat-1"
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"] == "chatcmpl-it-chat-1"  # the worker received our request id
    assert isinstance(completion["choices"][0]["message"]["content"], str)
    usage = completion["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["prompt_tokens"] > 60  # 320x240 -> 10x8 image tokens plus the text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/vqa"])
@pytest.mark.parametrize(
    "image", [b64(image_bytes("JPEG", (256, 192))), data_uri(image_bytes("WEBP"), "image/webp")]
)
async def test_simple_shape(
    path: str, image: str, gateway_url: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        gateway_url + path, json=vqa_body(image, "What brand?", max_tokens=5)
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer) == ["text"]
    assert isinstance(answer["text"], str)


async def test_streaming_arrives_incrementally(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    """Tokens leave the gateway as they arrive, spread over the generation like the
    worker's own stream, not bunched up.

    Timing on this 2-core machine is at the mercy of the scheduler: the worker's three busy
    processes, the gateway, this client and whatever else runs share two CPUs, and a starved
    process (often the worker's API server) sends a burst instead of a stream. So each
    attempt streams the same greedy request directly, then through the gateway; the gateway
    passes once one of its streams is clean, fails if the worker's were clean every time
    while its own never were, and the test is inconclusive (skipped) otherwise.
    """
    body = chat_body(
        LONG_PROMPT,
        max_tokens=600,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    attempts: list[dict[str, dict[str, float]]] = []
    for _ in range(3):
        gc.collect()
        gc.disable()  # the gateway runs in this process: keep its collector out of the timing
        try:
            attempt = {
                name: _stream_stats(await _arrivals(http, f"{base}/v1/chat/completions", body))
                for name, base in (("direct", worker_url), ("gateway", gateway_url))
            }
        finally:
            gc.enable()
        attempts.append(attempt)
        if _clean(attempt["gateway"]):
            print(f"\nstreaming, direct vs through the gateway: {attempt}")
            return
    if all(_clean(a["direct"]) for a in attempts):
        raise AssertionError(f"the worker streams cleanly, the gateway does not: {attempts}")
    pytest.skip(f"machine too busy to judge streaming: {attempts}")


def _clean(stats: dict[str, float]) -> bool:
    """Streamed as generated (~1.5 ms a token): first token early, no long stall."""
    return (
        stats["tokens"] >= 250  # greedy, yet vLLM's prefix cache can move the end of text
        and stats["ttft_ms"] < 0.25 * stats["total_ms"]
        and stats["spread_ms"] > 0.5 * stats["tokens"]
        and stats["gap_max_ms"] < 150
    )


def _stream_stats(timed: tuple[float, list[float]]) -> dict[str, float]:
    started, arrivals = timed
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return {
        "tokens": len(arrivals),
        "ttft_ms": (arrivals[0] - started) * 1000,
        "total_ms": (arrivals[-1] - started) * 1000,
        "spread_ms": (arrivals[-1] - arrivals[0]) * 1000,
        "gap_median_ms": statistics.median(gaps),
        "gap_p90_ms": statistics.quantiles(gaps, n=10)[-1],
        "gap_max_ms": max(gaps),
    }


async def _arrivals(
    http: httpx.AsyncClient, url: str, body: dict[str, object]
) -> tuple[float, list[float]]:
    """Start time, and arrival time of each content event of a streamed completion."""
    started = time.perf_counter()
    async with http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        events = await _events(response)
    assert events[-1][2] == b"data: [DONE]"
    assert b'"usage"' in events[-2][2]
    return started, [t for t, _, event in events if b'"delta"' in event]


async def test_bad_inputs_never_reach_the_worker(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    async def seen() -> float:
        return await _worker_chat_requests(http, worker_url)

    before = await _settled(seen)
    for case in bad_cases():
        headers = {"content-type": case.content_type} if case.content_type else {}
        response = await http.post(gateway_url + case.path, content=case.body, headers=headers)
        assert response.status_code == case.status, (case.id, response.text)
        assert response.json()["error"]["code"] == case.code, case.id
    assert await _settled(seen) == before
    # Control: the counter does move for a request that is forwarded.
    ok = await http.post(f"{gateway_url}/v1/chat/completions", json=chat_body(max_tokens=1))
    assert ok.status_code == 200
    assert await _settled(seen) == before + 1


async def _worker_state(http: httpx.AsyncClient, worker_url: str) -> tuple[float, float, float]:
    """(requests running, requests finished, tokens generated) from the worker's metrics.

    vLLM counts an aborted request under none of its finish reasons, so an abort shows as:
    running back to 0, finished unchanged, and far fewer tokens than were asked for.
    """
    samples = await scrape(http, worker_url)
    running = total(samples, "vllm:num_requests_running")
    finished = total(samples, "vllm:request_success_total")
    generated = total(samples, "vllm:generation_tokens_total")
    return running, finished, generated


async def _idle_state(http: httpx.AsyncClient, worker_url: str) -> tuple[float, float, float]:
    """The worker's state once nothing runs and its counters stopped moving."""
    last = await _worker_state(http, worker_url)
    for _ in range(100):
        await asyncio.sleep(0.1)
        now = await _worker_state(http, worker_url)
        if now == last and now[0] == 0:
            return now
        last = now
    raise AssertionError(f"worker never went idle: {last}")


HangUp = Callable[[str], Awaitable[None]]  # sends a request to a base URL, hangs up early


async def _assert_aborts(
    http: httpx.AsyncClient, worker_url: str, gateway_url: str, hang_up: HangUp
) -> None:
    """Hanging up on the gateway mid-generation must abort the worker's request.

    On this oversubscribed 2-core machine a starved process can make a trial meaningless,
    so a failure is only reported if the worker does abort when the same client hangs up
    on it directly; otherwise the test is skipped as inconclusive.
    """
    failure = await _abort_trial(http, worker_url, gateway_url, hang_up)
    if failure is None:
        return
    control = await _abort_trial(http, worker_url, worker_url, hang_up)
    if control is not None:
        pytest.skip(f"machine too busy: the worker does not abort directly either ({control})")
    raise AssertionError(failure)


async def _abort_trial(
    http: httpx.AsyncClient, worker_url: str, base_url: str, hang_up: HangUp
) -> str | None:
    """None when the worker aborted after the hang-up, else what went wrong."""
    asked = 1500  # ~3 s of generation here; an abort takes milliseconds
    for _ in range(3):
        before = await _idle_state(http, worker_url)
        await hang_up(base_url)
        hung_up = time.perf_counter()
        if (await _worker_state(http, worker_url))[1] == before[1]:
            break  # not finished when we hung up: a fair trial
    else:
        pytest.skip("machine too busy: every answer was complete before the client hung up")
    for _ in range(1000):  # a full generation of `asked` tokens ends well within this
        if (await _worker_state(http, worker_url))[0] == 0:
            break
        await asyncio.sleep(0.01)
    stopped_ms = (time.perf_counter() - hung_up) * 1000
    _, finished, generated = await _idle_state(http, worker_url)
    tokens = generated - before[2]
    outcome = f"worker stopped {stopped_ms:.0f} ms after the hang-up, {tokens:.0f} tokens in"
    print(f"\n{base_url}: {outcome}")
    if finished != before[1] or tokens >= asked / 2 or stopped_ms >= 2000:
        return f"not aborted: {outcome}, finished {before[1]:.0f} -> {finished:.0f}"
    return None


async def test_client_disconnect_mid_stream_aborts_the_worker_request(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    body = chat_body(LONG_PROMPT, max_tokens=1500, temperature=0, stream=True)

    async def hang_up_mid_stream(base_url: str) -> None:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            chunks = 0
            async for _ in response.aiter_raw():
                chunks += 1
                if chunks == 3:
                    break

    await _assert_aborts(http, worker_url, gateway_url, hang_up_mid_stream)


async def test_client_disconnect_while_waiting_aborts_the_worker_request(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    body = chat_body(LONG_PROMPT, max_tokens=1500, temperature=0)

    async def hang_up_while_waiting(base_url: str) -> None:
        # Hang up well before this prompt's earliest end of text (~300 tokens, ~0.4 s).
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{base_url}/v1/chat/completions", json=body, timeout=0.1)

    await _assert_aborts(http, worker_url, gateway_url, hang_up_while_waiting)


async def test_openai_client_plain_and_streamed_with_image(gateway_url: str) -> None:
    image = data_uri(image_bytes("JPEG", (200, 150)), "image/jpeg")
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "Is this a good gift for my mother?"},
            ],
        }
    ]
    async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused") as client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=6, temperature=0.7, seed=1
        )
        assert isinstance(completion.choices[0].message.content, str)
        assert completion.usage is not None
        assert completion.usage.completion_tokens <= 6

        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_completion_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert usage is not None
        assert usage.completion_tokens <= 6

        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]

        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=messages, top_p=0)
        assert caught.value.code == "invalid_top_p"
