"""Streams of SSE bytes the routes send: a worker's stream seen on its way, or a replay.

RecordingStream forwards each event as soon as it is complete, and keeps what the
cache and the interaction log need: the answer's text, finish reason and usage.
The worker is always asked for usage; the usage event is dropped on the way when
the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol, Self

from gateway import json_text
from gateway.answers import CachedAnswer, CompletionSummary, ToolCallRecord

_DONE: Final = b"[DONE]"
_COMPLETE_REASONS: Final = frozenset({"stop", "length"})
# The finish reason of an answer moderation cut off (OpenAI's own name for it): shared with
# a coalescing leader's waiters as a refusal, never stored, never served.
CONTENT_FILTER: Final = "content_filter"
# Tasks started from close() must be referenced until done, or they may vanish.
_background: set[asyncio.Task[None]] = set()


class ChunkStream(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class ReplayStream:
    """Pre-rendered events (a cache hit or a coalesced answer)."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = iter(events)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._events = iter(())


class AnswerRecorder:
    """Accumulates an OpenAI chat completion stream event by event."""

    def __init__(self) -> None:
        self.parts: list[str] = []  # choice 0's content: what the cache stores
        # Per choice index (n > 1): its content pieces and its tool-call argument pieces,
        # in arrival order; moderation reads these, each choice on its own.
        self.texts: dict[int, list[str]] = {}
        self.contents: dict[int, list[str]] = {}  # content pieces only, per choice
        # (choice, tool-call index) -> [name, arguments so far]
        self.calls: dict[tuple[int, int], list[str]] = {}
        self.finishes: dict[int, str] = {}  # per choice
        self.logprobs = False  # a stream with logprobs is served, never stored
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.failed = False

    def observe(self, data: bytes) -> bool:
        """Record one event's data; False when the event is usage-only."""
        if data == _DONE:
            self.done = True
            return True
        try:
            event = json_text.loads(data)
        except ValueError:
            self.failed = True
            return True
        if not isinstance(event, dict):
            self.failed = True
            return True
        if "error" in event:
            self.failed = True
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = event.get("choices")
        if not choices:
            return usage is None
        for choice in choices:
            if isinstance(choice, dict):
                self._observe_choice(choice)
        return True

    def _observe_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            self.texts.setdefault(index, []).append(content)
            self.contents.setdefault(index, []).append(content)
            if index == 0:
                self.parts.append(content)
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            position = call.get("index", 0)
            record = self.calls.setdefault((index, position if isinstance(position, int) else 0),
                                           ["", ""])  # fmt: skip
            if isinstance(function.get("name"), str):
                record[0] += function["name"]
            if isinstance(function.get("arguments"), str):
                record[1] += function["arguments"]
                self.texts.setdefault(index, []).append(function["arguments"])
        if choice.get("logprobs"):
            self.logprobs = True
        if choice.get("finish_reason"):
            self.finishes[index] = str(choice["finish_reason"])
            if index == 0:
                self.finish_reason = self.finishes[index]

    def summary(self) -> CompletionSummary:
        """Every choice's text and tool call so far, for moderation and the log."""
        usage = self.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        texts = {i: "".join(parts) for i, parts in self.contents.items()}
        calls = tuple(
            ToolCallRecord(choice, name, arguments)
            for (choice, _), (name, arguments) in sorted(self.calls.items())
        )
        return CompletionSummary(
            texts,
            calls,
            prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None,
        )

    def refused_answer(self) -> CachedAnswer:
        """What arrived of an answer moderation refused, every choice marked CONTENT_FILTER."""
        usage = self.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        more = tuple(
            ("".join(self.contents.get(index, [])), CONTENT_FILTER)
            for index in range(1, max(self.texts, default=0) + 1)
        )
        return CachedAnswer(
            "".join(self.parts),
            CONTENT_FILTER,
            prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0,
            more,
        )

    def answer(self) -> CachedAnswer | None:
        """The complete answer, or None for a broken, failed or cut-off stream."""
        if not self.done or self.failed or self.finish_reason not in _COMPLETE_REASONS:
            return None
        usage = self.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        if self.calls or self.logprobs or sorted(self.finishes) != list(range(len(self.finishes))):
            return None
        more = []
        for index in range(1, len(self.finishes)):  # n > 1: every choice, each complete
            if self.finishes[index] not in _COMPLETE_REASONS:
                return None
            more.append(("".join(self.contents.get(index, [])), self.finishes[index]))
        return CachedAnswer(
            "".join(self.parts), self.finish_reason or "", prompt, completion, tuple(more)
        )


class RecordingStream:
    """Forward a worker's SSE stream event by event, recording the answer.

    on_end runs once: with the answer when the stream completed, with None when it
    broke off or the client left (close() before the end). ``guard`` (moderation) sees
    the recorded answer after each chunk, before the chunk's events are passed on; when
    it raises, the worker's stream is closed, ``on_refused`` (else on_end with None) gets
    what arrived of the refused answer (``refused_answer``), and the error goes on to the
    response (an SSE error event).
    """

    def __init__(
        self,
        upstream: ChunkStream,
        forward_usage: bool,
        on_end: Callable[[CachedAnswer | None], Awaitable[None]],
        guard: Callable[[AnswerRecorder], None] | None = None,
        finish_on_close: bool = False,
        on_refused: Callable[[CachedAnswer], Awaitable[None]] | None = None,
    ) -> None:
        self._guard = guard
        self._on_refused = on_refused
        self._refused = False
        # A coalescing leader's stream: closed before its end (the client left), it is
        # read to the end in the background, so on_end stores and shares the answer.
        self._finish_on_close = finish_on_close
        self._finishing = False
        self._upstream = upstream
        self._chunks = upstream.__aiter__()
        self._forward_usage = forward_usage
        self._on_end: Callable[[CachedAnswer | None], Awaitable[None]] | None = on_end
        self._buffer = b""
        self.recorder = AnswerRecorder()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                # A last event without its blank line is still an event: recorded and
                # checked by the guard like any other, never passed on unread.
                out = b""
                if self._buffer.strip():
                    try:
                        out = self._split(b"\n\n")
                        self._check()
                    except BaseException:
                        await self._end(None)
                        raise
                self._buffer = b""
                await self._end(self.recorder.answer())
                if out:
                    return out
                raise
            except asyncio.CancelledError:
                if not self._finish_on_close:
                    await self._end(None)
                raise  # a leader's stream: close() reads on for the waiters
            except BaseException:
                await self._end(None)
                raise
            try:
                out = self._split(chunk)
                self._check()
            except BaseException:
                self._upstream.close()
                await self._end(None)
                raise
            if out:
                return out

    def _check(self) -> None:
        if self._guard is not None:
            try:
                self._guard(self.recorder)
            except BaseException:
                self._refused = True
                raise

    def _split(self, chunk: bytes) -> bytes:
        """Complete events from the buffer, minus a usage event the client did not want."""
        self._buffer += chunk
        *events, self._buffer = self._buffer.split(b"\n\n")
        kept = []
        for event in events:
            data = event[6:] if event.startswith(b"data: ") else None
            keep = self.recorder.observe(data.strip()) if data is not None else True
            if keep or self._forward_usage:
                kept.append(event + b"\n\n")
        return b"".join(kept)

    async def _end(self, answer: CachedAnswer | None) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is None:
            return
        if self._refused and self._on_refused is not None:
            await self._on_refused(self.recorder.refused_answer())
        else:
            await on_end(answer)

    def close(self) -> None:
        if self._finish_on_close and self._on_end is not None:
            if not self._finishing:
                self._finishing = True
                task = asyncio.get_running_loop().create_task(self._finish())
                _background.add(task)
                task.add_done_callback(_background.discard)
            return  # _finish ends it
        self._upstream.close()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            task = asyncio.get_running_loop().create_task(_run(on_end(None)))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _finish(self) -> None:
        """Read the rest of the worker's answer for nobody but on_end."""
        try:
            with contextlib.suppress(Exception):
                async for _ in self:
                    pass
        finally:
            self._upstream.close()
            await self._end(None)  # broke off (or cancelled): on_end(None) if not yet run


async def _run(awaitable: Awaitable[None]) -> None:
    await awaitable


class GapTimer:
    """Passes a stream on, reporting the time between consecutive chunks (inter-token
    latency as the client sees it); the wait for the first chunk is TTFT, not a gap."""

    def __init__(self, inner: ChunkStream, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._chunks = inner.__aiter__()
        self._observe = observe
        self._last: float | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        now = time.perf_counter()
        if self._last is not None:
            self._observe(now - self._last)
        self._last = now
        return chunk

    def close(self) -> None:
        self._inner.close()
