"""Issue 15, section 3: the smaller faults, each pinned by a test that failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.answers import CachedAnswer
from gateway.breaker import CircuitBreaker
from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.spool import Spool
from gateway.metrics import Metrics
from gateway.moderation.images import ImageCheckFailed, ImageVerdicts
from gateway.moderation.settings import ModerationSettings
from gateway.protocol import ChatCompletionRequest
from gateway.streams import AnswerRecorder, RecordingStream
from gateway.upstream.pool import Worker, WorkerPool
from gateway.upstream.proxy import Upstream, _read_worker_error
from gateway.validation.parse import parse_chat_body
from gateway.validation.prepare import prepare_chat
from tests.support.requests import MODEL, chat_body
from tests.support.servers import gateway_settings

SETTINGS = gateway_settings("http://127.0.0.1:1", max_tokens_cap=4096)


# --- token limits: vLLM's order (max_completion_tokens first) -------------------------------


async def test_the_token_budget_is_the_limit_the_worker_applies() -> None:
    # vLLM takes max_completion_tokens over max_tokens: charging max_tokens let a request
    # pay for 1 token and get 2048.
    parsed = parse_chat_body(chat_body(max_tokens=1, max_completion_tokens=2048))
    assert isinstance(parsed, ChatCompletionRequest)
    prepared = await prepare_chat(parsed, SETTINGS, frozenset({MODEL}))
    assert prepared.token_budget == 2048
    sent = json.loads(prepared.body)
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 2048


async def test_min_tokens_is_checked_against_the_limit_the_worker_applies() -> None:
    parsed = parse_chat_body(chat_body(max_tokens=2048, max_completion_tokens=4, min_tokens=8))
    assert isinstance(parsed, ChatCompletionRequest)
    with pytest.raises(GatewayError) as caught:
        await prepare_chat(parsed, SETTINGS, frozenset({MODEL}))
    assert caught.value.param == "min_tokens"


# --- an opened stream is never orphaned by a late cancellation ------------------------------


class _Opened:
    def __init__(self) -> None:
        self.discarded = 0


async def test_a_cancellation_after_the_attempt_finished_discards_its_stream() -> None:
    settings = gateway_settings("http://127.0.0.1:1")
    upstream = Upstream(None, None, settings, Metrics())  # type: ignore[arg-type]
    worker = Worker("http://w", CircuitBreaker(5.0))
    opened = _Opened()
    finished = asyncio.Event()

    async def attempt(_: Worker) -> _Opened:
        finished.set()
        return opened

    def discard(result: _Opened) -> None:
        result.discarded += 1

    call = asyncio.ensure_future(upstream._watched(worker, attempt, discard))
    await finished.wait()  # the attempt has returned; the caller has not resumed yet
    call.cancel()  # lands after the attempt returned its stream, before the caller has it
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(5):
        await asyncio.sleep(0)
    assert opened.discarded == 1
    assert not worker.down_waiters


async def test_a_cancellation_during_the_attempt_discards_what_it_returns_later() -> None:
    settings = gateway_settings("http://127.0.0.1:1")
    upstream = Upstream(None, None, settings, Metrics())  # type: ignore[arg-type]
    worker = Worker("http://w", CircuitBreaker(5.0))
    opened = _Opened()
    started = asyncio.Event()

    async def attempt(_: Worker) -> _Opened:
        started.set()
        # An attempt that finishes anyway (it swallows the cancellation).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return opened

    def discard(result: _Opened) -> None:
        result.discarded += 1

    call = asyncio.ensure_future(upstream._watched(worker, attempt, discard))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(5):
        await asyncio.sleep(0)
    assert opened.discarded == 1


# --- bodies read whole, across TCP segments ---------------------------------------------------

_METRICS_HEAD = b"# HELP vllm:num_requests_running x\nvllm:num_requests_running 2\n"
_METRICS_TAIL = b"vllm:num_requests_waiting 7\n" + b"# filler\n" * 2000


@pytest.fixture
async def segmented_server() -> AsyncIterator[str]:
    async def metrics(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(_METRICS_HEAD)
        await asyncio.sleep(0.2)  # the rest arrives in a later TCP segment
        await response.write(_METRICS_TAIL)
        await response.write_eof()
        return response

    async def error(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=400)
        response.content_type = "application/json"
        await response.prepare(request)
        body = json.dumps({"error": {"message": "x" * 900, "param": "messages"}}).encode()
        await response.write(body[:20])
        await asyncio.sleep(0.2)
        await response.write(body[20:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/error", error)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_metrics_body_is_read_whole_across_segments(segmented_server: str) -> None:
    settings = gateway_settings(segmented_server)
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(session, settings, Metrics())
        worker = pool.workers[0]
        await pool._fetch_load(worker)
    assert (worker.running, worker.waiting) == (2.0, 7.0)


async def test_a_worker_error_message_is_read_whole_across_segments(
    segmented_server: str,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{segmented_server}/error") as response,
    ):
        message, param = await _read_worker_error(response)
    assert message == "x" * 900
    assert param == "messages"


# --- the spool: a failed fsync is never reported durable; rotation never blocks submit ------


def test_a_failed_fsync_leaves_the_spool_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    spool.open()
    calls: list[int] = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    spool.append([{"request_id": "a"}], sync=False)
    with pytest.raises(OSError, match="Input/output"):
        spool.sync()
    assert spool.dirty  # the rows are not durable yet
    spool.sync()  # the next sync fsyncs again
    assert len(calls) == 2
    assert not spool.dirty
    spool.close()


def test_a_failed_fsync_of_an_append_leaves_the_spool_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    spool.open()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        spool.append([{"request_id": "a"}], sync=True)
    assert spool.dirty
    monkeypatch.undo()
    spool.close()


def test_rotation_does_not_hold_the_lock_while_it_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    spool.open()
    spool.append([{"request_id": "a"}], sync=False)
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(30)  # a slow disk
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    rotation = threading.Thread(target=spool.rotate)
    rotation.start()
    try:
        assert in_fsync.wait(30)
        appended = threading.Event()

        def submit() -> None:  # what submit() does on the event loop when the queue is full
            spool.append([{"request_id": "b"}], sync=False)
            appended.set()

        threading.Thread(target=submit, daemon=True).start()
        assert appended.wait(10), "an append waited for the rotation's fsync"
    finally:
        release.set()
        rotation.join(30)
    monkeypatch.undo()
    sealed = spool.sealed_files()
    assert len(sealed) == 1
    assert [row["request_id"] for row in spool.read_chunk(sealed[0], 0, 10).rows] == ["a"]
    assert spool.read_chunk(spool.path, 0, 10).rows[0]["request_id"] == "b"
    spool.close()


# --- image moderation: a cancelled request does not fail the others' shared check -----------


async def test_a_cancelled_request_does_not_fail_a_shared_image_check() -> None:
    release = asyncio.Event()
    asked = 0

    async def ask(body: bytes, request_id: str, digest: str) -> bytes:
        nonlocal asked
        asked += 1
        await release.wait()
        answer = {"choices": [{"message": {"role": "assistant", "content": "yes"}}]}
        return json.dumps(answer).encode()

    verdicts = ImageVerdicts(ModerationSettings(image_check=True), ask, Metrics(), None, None, "t")
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    first = asyncio.ensure_future(verdicts.flagged(MODEL, "d" * 64, part, "r1"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(verdicts.flagged(MODEL, "d" * 64, part, "r2"))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert await second is True  # the real verdict, not "check failed"
    assert asked == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_real_failure_still_fails_the_shared_check() -> None:
    async def ask(body: bytes, request_id: str, digest: str) -> bytes:
        await asyncio.sleep(0.01)
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, "boom")

    verdicts = ImageVerdicts(ModerationSettings(image_check=True), ask, Metrics(), None, None, "t")
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    results = await asyncio.gather(
        verdicts.flagged(MODEL, "e" * 64, part, "r1"),
        verdicts.flagged(MODEL, "e" * 64, part, "r2"),
        return_exceptions=True,
    )
    assert all(isinstance(r, ImageCheckFailed) for r in results)


# --- SSE: a final event without its blank line is moderated like any other ------------------


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)
        self.closed = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self.closed = True


def _delta(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode()


async def test_a_final_event_without_its_blank_line_passes_the_guard() -> None:
    ended: list[CachedAnswer | None] = []

    async def on_end(answer: CachedAnswer | None) -> None:
        ended.append(answer)

    def guard(recorder: AnswerRecorder) -> None:
        if "forbidden" in "".join(recorder.parts):
            raise GatewayError(ErrorCode.CONTENT_POLICY_VIOLATION, "refused")

    upstream = _Chunks([_delta("fine ") + b"\n\n", _delta("forbidden")])  # no blank line
    stream = RecordingStream(upstream, False, on_end, guard)
    sent: list[bytes] = []

    async def consume() -> None:
        async for chunk in stream:
            sent.append(chunk)

    with pytest.raises(GatewayError):
        await consume()
    assert b"forbidden" not in b"".join(sent)
    assert ended == [None]


async def test_a_final_event_without_its_blank_line_still_reaches_the_client() -> None:
    async def on_end(answer: CachedAnswer | None) -> None:
        pass

    upstream = _Chunks([_delta("a") + b"\n\n", b"data: [DONE]"])
    stream = RecordingStream(upstream, False, on_end, None)
    sent = b"".join([chunk async for chunk in stream])
    assert sent.endswith(b"data: [DONE]\n\n")
    assert stream.recorder.done


# --- a worker discovery drops leaves no metric series behind --------------------------------


async def test_a_worker_that_leaves_the_pool_leaves_no_metric_series() -> None:
    gone, kept = "http://127.0.0.1:9", "http://127.0.0.1:10"
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(session, gateway_settings(gone, kept), metrics)
        for worker in pool.workers:
            worker.healthy = True
        chosen = {pool.choose(f"photo-{n}").url for n in range(64)}  # affinity spreads them
        assert gone in chosen
        pool._set_workers([kept])
    assert f'worker="{gone}"' not in metrics.render()[0].decode()
