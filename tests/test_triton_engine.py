"""The gateway in front of a real Triton worker (triton-cpu-tiny: Triton 2.51 with our
Python-backend model driving vLLM's engine), one per test session.

Order matters at the end of this module: the SIGKILL drill kills the session's Triton
worker (the next test starts it again), and the SIGTERM drain stops it for good.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from localstack.processes import (
    process_tree,
    signal_tree,
    start_gateway,
    start_nginx,
)
from tests.support.images import data_uri, image_bytes
from tests.support.requests import MODEL, chat_body, image_chat_body
from tests.support.servers import run_gateway
from tests.support.triton import TritonWorker, settled_triton_metric, triton_metric
from tests.support.worker import LOG_DIR

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"


@pytest.fixture
def triton(triton_worker: TritonWorker) -> TritonWorker:
    """The session's Triton worker, started again when a drill has killed it."""
    triton_worker.ensure_running()
    return triton_worker


@pytest.fixture
async def gateway(triton: TritonWorker) -> AsyncIterator[str]:
    """An in-process gateway whose one pool is the Triton worker (cache off), its cap on
    max_tokens raised for the long answers below."""
    async with run_gateway(
        worker_pools=[triton.pool()], health_interval_s=0.5, max_tokens_cap=6000
    ) as url:
        yield url


async def test_plain_answer_with_usage_and_finish_reason(gateway: str) -> None:
    body = chat_body("Describe a leather bag.", max_tokens=6, min_tokens=6, ignore_eos=True)
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(gateway + CHAT, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6


async def test_streamed_answer_arrives_as_it_is_generated(
    gateway: str, triton: TritonWorker
) -> None:
    # Thousands of tokens (seconds of generation): on two cores a Triton worker that is
    # generating can starve this process for two seconds or more, and a short answer
    # would be finished before the first event is read.
    body = chat_body(
        "Describe a leather bag.",
        max_tokens=3000,
        min_tokens=3000,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    finished = await settled_triton_metric(
        triton, "vllm:request_success_total", finished_reason="length"
    )
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream("POST", gateway + CHAT, json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = json.loads((await anext(lines))[6:])
        # The first event is here while the engine is still generating the other 2999
        # tokens: events are passed on as they come, not when the answer is whole.
        assert first["choices"][0]["delta"]["role"] == "assistant"
        during = await triton_metric(triton, "vllm:request_success_total", finished_reason="length")
        rest = [json.loads(line[6:]) async for line in lines if line.startswith("data: {")]
    assert during == finished
    choices = [c for e in rest for c in e["choices"]]
    assert choices[-1]["finish_reason"] == "length"
    assert {e["object"] for e in rest} == {"chat.completion.chunk"}
    assert rest[-1]["usage"]["completion_tokens"] == 3000


async def test_image_question_reads_as_vllm_reads_it(gateway: str, worker_url: str) -> None:
    """The prompt the gateway renders with the checkpoint's template, images as the
    model's placeholders, is the one vLLM's own server renders: same prompt tokens."""
    photo = data_uri(image_bytes(size=(96, 64)))
    bodies = [
        chat_body("What is this?", max_tokens=4, temperature=0),
        image_chat_body("What is this?", photo, max_tokens=4, temperature=0),
    ]
    async with httpx.AsyncClient(timeout=120) as client:
        via_triton = [await client.post(gateway + CHAT, json=body) for body in bodies]
        via_vllm = [await client.post(worker_url + CHAT, json=body) for body in bodies]
    assert [r.status_code for r in via_triton] == [200, 200], via_triton[1].text
    tokens = [r.json()["usage"]["prompt_tokens"] for r in via_triton]
    assert tokens == [r.json()["usage"]["prompt_tokens"] for r in via_vllm]
    assert tokens[1] > tokens[0] + 2  # the image's tokens besides its two markers


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "lookup"}}]),
        ("logprobs", True),
    ],
)
async def test_a_field_triton_cannot_honour_is_our_400(
    gateway: str, field: str, value: Any
) -> None:
    body = chat_body("hello", max_tokens=4, **{field: value})
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(gateway + CHAT, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert "triton" in error["message"]


async def test_json_schema_is_honoured(gateway: str) -> None:
    schema = {
        "type": "object",
        "properties": {"leather": {"type": "boolean"}},
        "required": ["leather"],
        "additionalProperties": False,
    }
    body = chat_body(
        "Is it leather?",
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(gateway + CHAT, json=body)
    assert response.status_code == 200, response.text
    assert set(json.loads(response.json()["choices"][0]["message"]["content"])) == {"leather"}


async def test_cache_hit_and_coalesced_request(
    triton: TritonWorker, gateway_process_env: dict[str, str]
) -> None:
    namespace = gateway_process_env["GATEWAY_CACHE_NAMESPACE"] + "-triton"
    async with run_gateway(
        worker_pools=[triton.pool()], cache_enabled=True, cache_namespace=namespace
    ) as url:
        before = await triton_metric(triton, "nv_inference_request_success")
        body = chat_body("Is this bag a good gift?", max_tokens=4, temperature=0)
        async with httpx.AsyncClient(timeout=120) as client:
            first = await client.post(url + CHAT, json=body)
            second = await client.post(url + CHAT, json=body)
            assert [first.headers["x-cache"], second.headers["x-cache"]] == ["miss", "hit"]
            assert _texts(second) == _texts(first)
            # Two at once, long enough to overlap: one generation for both.
            slow = chat_body(
                "A gift?", max_tokens=48, min_tokens=48, ignore_eos=True, temperature=0
            )
            pair = await asyncio.gather(*(client.post(url + CHAT, json=slow) for _ in range(2)))
        assert sorted(r.headers["x-cache"] for r in pair) == ["coalesced", "miss"]
        assert _texts(pair[0]) == _texts(pair[1])
        assert await triton_metric(triton, "nv_inference_request_success") == before + 2


async def test_client_disconnect_aborts_the_engine_request(
    gateway: str, triton: TritonWorker
) -> None:
    aborted = await triton_metric(triton, "vllm:request_success_total", finished_reason="abort")
    lengths = await triton_metric(triton, "vllm:request_success_total", finished_reason="length")
    # Long enough (over ten seconds) that the answer cannot finish while this process waits
    # for the CPU (see the streamed test): the abort, not the end, must stop it.
    body = chat_body("Tell a long story.", max_tokens=6000, min_tokens=6000, ignore_eos=True,
                     stream=True)  # fmt: skip
    done = aborted
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", gateway + CHAT, json=body) as response:
            async for line in response.aiter_lines():
                if '"content"' in line:
                    break  # generation has started: leave
        # The engine hears of it at its next token: aborted, not run to 6000 tokens.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = await triton_metric(
                triton, "vllm:request_success_total", finished_reason="abort"
            )
            if done > aborted:
                break
            await asyncio.sleep(0.2)
    assert done == aborted + 1
    assert (
        await triton_metric(triton, "vllm:request_success_total", finished_reason="length")
        == lengths
    )  # not run to its 6000 tokens
    running = await triton_metric(triton, "vllm:num_requests_running")
    assert running == 0


async def test_triton_and_vllm_pools_do_not_share_cache_entries(
    triton: TritonWorker, worker_url: str, gateway_process_env: dict[str, str]
) -> None:
    """A canary of the other engine beside a vLLM pool: the same request answered by each
    is stored under two keys, unless the Triton pool says its checkpoint is the same."""
    vllm_pool = {"name": "vllm", "urls": [worker_url]}
    body = chat_body("Which engine?", max_tokens=3, temperature=0)
    for share, expected in ((False, ["miss", "miss", "hit"]), (True, ["miss", "hit", "hit"])):
        namespace = f"{gateway_process_env['GATEWAY_CACHE_NAMESPACE']}-pools-{share}"
        triton_pool = triton.pool("triton")
        triton_pool["triton"] = {**triton_pool["triton"], "share_cache": share}
        pools = [vllm_pool, triton_pool]
        async with (
            run_gateway(worker_pools=pools, cache_enabled=True, cache_namespace=namespace) as url,
            httpx.AsyncClient(timeout=120) as client,
        ):
            outcomes = []
            for _ in range(3):  # the pools take turns (weights 1 and 1)
                response = await client.post(url + CHAT, json=body)
                assert response.status_code == 200, response.text
                outcomes.append(response.headers["x-cache"])
        assert outcomes == expected, share


async def test_official_openai_sdk_through_nginx(
    triton: TritonWorker, gateway_process_env: dict[str, str]
) -> None:
    gateway = start_gateway([], LOG_DIR, env={**gateway_process_env, **triton.pools_env(),
                                              "GATEWAY_WORKER_URLS": ""})  # fmt: skip
    nginx = start_nginx([f"127.0.0.1:{gateway.port}"], LOG_DIR)
    client = openai.AsyncOpenAI(base_url=f"{nginx.url}/v1", api_key="unused", max_retries=0)
    photo = data_uri(image_bytes(size=(64, 64)))
    content: Any = [
        {"type": "image_url", "image_url": {"url": photo}},
        {"type": "text", "text": "Is this bag real leather?"},
    ]
    try:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8
        )
        assert completion.choices[0].message.role == "assistant"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens > 4
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens >= 1
    finally:
        await client.close()
        nginx.stop()
        gateway.stop()


async def test_sigkilled_triton_worker_fails_over_with_no_failed_request(
    triton: TritonWorker, worker_url: str
) -> None:
    """Two pools, Triton and vLLM (two Triton workers do not fit this machine beside the
    session's vLLM worker); the Triton worker is killed under load."""
    assert triton.process is not None, "the drill needs a worker this session started"
    pools = [triton.pool("triton"), {"name": "vllm", "urls": [worker_url]}]
    async with (
        # Checked often; a killed worker refuses at once, so a generous timeout costs
        # nothing, and a short one fails the healthy vLLM worker too whenever this process
        # waits for the CPU, which the Triton worker can make it do for seconds.
        run_gateway(worker_pools=pools, health_interval_s=0.5, health_timeout_s=5.0) as url,
        httpx.AsyncClient(timeout=120) as client,
    ):
        results: list[tuple[int, bool, bool]] = []
        stop = time.monotonic() + 8.0

        async def loop(stream: bool) -> None:
            body = chat_body("A bag?", max_tokens=16, min_tokens=16, ignore_eos=True, stream=stream)
            while time.monotonic() < stop:
                if stream:
                    async with client.stream("POST", url + CHAT, json=body) as response:
                        text = (await response.aread()).decode()
                    ok = text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                else:
                    response = await client.post(url + CHAT, json=body)
                    ok = response.status_code == 200
                results.append((response.status_code, ok, stream))

        clients = [asyncio.create_task(loop(stream=i % 2 == 0)) for i in range(6)]
        await asyncio.sleep(2.0)
        signal_tree(triton.process, signal.SIGKILL)
        await asyncio.gather(*clients)
    assert [r for r in results if r[0] != 200] == []
    assert all(ok for _, ok, stream in results if not stream)
    broken = sum(1 for _, ok, stream in results if stream and not ok)
    assert broken <= 3  # at most the streams that were mid-answer on the killed worker
    print(f"SIGKILL: {len(results)} requests, {broken} streams cut mid-answer")


async def test_sigterm_drains_and_leaves_no_engine_process(triton: TritonWorker) -> None:
    """Last: the session's Triton worker is stopped for good."""
    assert triton.process is not None, "the drill needs a worker this session started"
    launcher = triton.process.process
    tree = process_tree(launcher.pid)
    assert len(tree) >= 4  # launcher, tritonserver, the model's stub, vLLM's EngineCore
    async with (
        run_gateway(worker_pools=[triton.pool()]) as url,
        httpx.AsyncClient(timeout=120) as client,
    ):
        body = chat_body("A bag?", max_tokens=64, min_tokens=64, ignore_eos=True)
        in_flight = asyncio.create_task(client.post(url + CHAT, json=body))
        await asyncio.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)
        response = await in_flight
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 64
    await asyncio.to_thread(launcher.wait, 120)
    assert launcher.returncode == 0
    left = [pid for pid in tree if _alive(pid)]
    assert left == [], f"processes left after SIGTERM: {left}"


def _texts(response: httpx.Response) -> list[str]:
    return [choice["message"]["content"] for choice in response.json()["choices"]]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
