"""Through the gateway to a real vLLM CPU worker (cpu-tiny: random weights, noise answers).

Checks in the worker's own /metrics that bad inputs never reach it, that tokens stream
while the worker still generates, and that a client hanging up aborts the generation.
These tests decide by cause (what the worker's counters say), never skip for a busy
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.support.bad_requests import bad_cases
from tests.support.images import b64, data_uri, image_bytes
from tests.support.metrics import scrape, total
from tests.support.requests import MODEL, chat_body, image_chat_body, vqa_body
from tests.support.worker import idle_state, worker_state

pytestmark = pytest.mark.engine

# The prompt of the long generations; with ignore_eos they last max_tokens (ASKED): seconds,
# long enough to read the worker's progress and to hang up in the middle.
LONG_PROMPT = "is this real leather"
CHAT_HANDLER = 'handler="/v1/chat/completions"'
ASKED = 1500  # tokens: seconds of generation here (the test gateway's cap)
CHECKPOINTS = (1, 200)  # the client's events at which the worker's progress is read


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


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[float, bytes]]:
    """Each SSE event of a response as it arrives: (arrival time, event)."""
    buffer = b""
    async for chunk in response.aiter_raw():
        now = time.perf_counter()
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield now, event


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
    """Tokens leave the gateway while the worker is still generating them.

    Decided by cause, not by timing: when the client holds its first and its 200th token,
    the worker's own metrics must show the request unfinished, and at the first one most
    of its tokens still to come. A gateway that buffers the answer hands over its first
    token only after the worker generated the rest, so it fails every attempt, on an idle
    machine or a busy one. A streaming gateway fails an attempt only if this process fell
    behind the worker by half the answer (seconds); it has three. The arrival figures are
    printed for the record.
    """
    body = chat_body(
        LONG_PROMPT,
        max_tokens=ASKED,
        ignore_eos=True,  # exactly ASKED tokens: the generation cannot end early
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    attempts: list[list[Progress]] = []
    for _ in range(3):
        progress, arrivals = await _stream_with_progress(http, worker_url, gateway_url, body)
        print(f"\nthrough the gateway: {_stream_stats(arrivals)}, worker's progress {progress}")
        attempts.append(progress)
        if progress[0].generated < ASKED / 2 and not any(p.finished for p in progress):
            return
    raise AssertionError(f"the client got tokens only once the worker had them all: {attempts}")


@dataclass(frozen=True)
class Progress:
    """The worker's progress when the client had received ``events`` events."""

    events: int
    generated: float  # tokens generated since the request was sent
    finished: float  # requests finished since then (0 or 1)


async def _stream_with_progress(
    http: httpx.AsyncClient, worker_url: str, gateway_url: str, body: dict[str, object]
) -> tuple[list[Progress], list[float]]:
    """Stream ``body`` through the gateway, reading the worker's progress at CHECKPOINTS;
    the progress, and each content event's arrival time."""
    _, finished_before, generated_before = await idle_state(http, worker_url)
    progress: list[Progress] = []
    arrivals: list[float] = []
    events: list[bytes] = []
    async with http.stream("POST", f"{gateway_url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for arrived, event in _sse(response):
            events.append(event)
            if b'"delta"' not in event:
                continue
            arrivals.append(arrived)
            if len(arrivals) in CHECKPOINTS:
                _, finished, generated = await worker_state(http, worker_url)
                done = finished - finished_before
                progress.append(Progress(len(arrivals), generated - generated_before, done))
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2].removeprefix(b"data: "))["usage"]["completion_tokens"] == ASKED
    return progress, arrivals


def _stream_stats(arrivals: list[float]) -> dict[str, float]:
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return {
        "events": len(arrivals),
        "spread_ms": round((arrivals[-1] - arrivals[0]) * 1000),
        "gap_median_ms": round(statistics.median(gaps), 2),
        "gap_p90_ms": round(statistics.quantiles(gaps, n=10)[-1], 2),
        "gap_max_ms": round(max(gaps), 2),
    }


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


HangUp = Callable[[str], Awaitable[None]]  # asks a base URL, hangs up mid-generation


async def _assert_aborts(
    http: httpx.AsyncClient, worker_url: str, gateway_url: str, hang_up: HangUp
) -> None:
    """Hanging up on the gateway mid-generation aborts the worker's request.

    Decided by cause: the request asks for ASKED tokens with ignore_eos, so unless it is
    aborted the worker finishes it, a success with every token; vLLM counts an aborted
    request under none of its finish reasons. ``hang_up`` leaves only once the worker is
    generating, so every trial is a fair one. A trial fails only if the abort took longer
    than the rest of the generation (seconds); three trials.
    """
    outcomes: list[str] = []
    for _ in range(3):
        aborted, outcome = await _abort_trial(http, worker_url, gateway_url, hang_up)
        print(f"\n{gateway_url}: {outcome}")
        if aborted:
            return
        outcomes.append(outcome)
    raise AssertionError(f"the worker finished what the client hung up on: {outcomes}")


async def _abort_trial(
    http: httpx.AsyncClient, worker_url: str, base_url: str, hang_up: HangUp
) -> tuple[bool, str]:
    """(whether the worker aborted the request, what it did after the hang-up)."""
    before = await idle_state(http, worker_url)
    await hang_up(base_url)
    hung_up = time.perf_counter()
    for _ in range(1000):  # a full generation of ASKED tokens ends well within this
        if (await worker_state(http, worker_url))[0] == 0:
            break
        await asyncio.sleep(0.01)
    stopped_ms = (time.perf_counter() - hung_up) * 1000
    _, finished, generated = await idle_state(http, worker_url)
    tokens, done = generated - before[2], finished - before[1]
    outcome = (
        f"worker stopped {stopped_ms:.0f} ms after the hang-up, {tokens:.0f} of {ASKED} "
        f"tokens generated, {done:.0f} finished"
    )
    return done == 0 and tokens < ASKED, outcome


async def test_client_disconnect_mid_stream_aborts_the_worker_request(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    body = chat_body(LONG_PROMPT, max_tokens=ASKED, ignore_eos=True, temperature=0, stream=True)

    async def hang_up_mid_stream(base_url: str) -> None:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            chunks = 0
            async for _ in response.aiter_raw():
                chunks += 1
                if chunks == 3:  # tokens arrived: the worker is generating
                    break

    await _assert_aborts(http, worker_url, gateway_url, hang_up_mid_stream)


async def test_client_disconnect_while_waiting_aborts_the_worker_request(
    gateway_url: str, worker_url: str, http: httpx.AsyncClient
) -> None:
    body = chat_body(LONG_PROMPT, max_tokens=ASKED, ignore_eos=True, temperature=0)

    async def hang_up_while_waiting(base_url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            url = f"{base_url}/v1/chat/completions"
            request = asyncio.create_task(client.post(url, json=body))
            # Hang up once the worker runs the request: not after a timer, which on a busy
            # machine could fire before the request even reached it.
            while (await worker_state(http, worker_url))[0] == 0:
                assert not request.done(), "answered before the worker was seen running"
                await asyncio.sleep(0.01)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        # Leaving the client closed its connection: the gateway sees the hang-up.

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
