"""A scriptable stand-in for a vLLM worker (health, models, chat completions), run in
process with tests.support.servers.serve; the fake_worker fixture in tests/conftest.py
shares one per session."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.requests import MODEL


@dataclass
class FakeWorker:
    """A stand-in for vLLM whose behaviour is chosen by the last user text.

    ``fake:status:<code>``  answer with that status and a vLLM-style error body
    ``fake:sleep:<s>``      wait before answering
    ``fake:hold:<s>``       wait, watching for the caller to hang up (counted in disconnects)
    ``fake:pace:<ms>:<n>``  stream n chunks, one every ms milliseconds
    ``fake:stall:<n>``      stream n chunks, then go silent
    ``fake:garbage``        answer 200 with a body that is not a completion
    ``fake:body:<json>``    answer 200 with exactly that body
    ``fake:say:<text>``     a complete answer with that text (streamed in 4-character
                            chunks, with finish_reason and usage, when asked)
    ``fake:sleepsay:<s>:<text>``  the same after waiting s seconds
    ``fake:gatesay:<name>:<text>``  the same once the test opens ``gate(name)``
    anything else           a small completion (streamed when asked)

    ``scripts`` maps a last user text to the command to follow instead, so a test can
    script an answer without putting it in the prompt; ``image_scripts`` maps the sha256
    of an image's bytes to the command for a request that carries that image and whose
    text is not in ``scripts``.
    """

    url: str = ""
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    disconnects: int = 0
    health_status: int = 200
    # Hold the event loop this long before answering /health. The loop is an in-process
    # gateway's too: its health check waits on a loop that is busy elsewhere.
    health_stall_s: float = 0.0
    scripts: dict[str, str] = field(default_factory=dict)
    image_scripts: dict[str, str] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        """The event ``fake:gatesay:<name>:...`` answers wait for (set it to answer)."""
        return self.gates.setdefault(name, asyncio.Event())

    def _command(self, content: Any) -> str:
        text = content if isinstance(content, str) else str(content[-1].get("text", ""))
        if text in self.scripts:
            return self.scripts[text]
        for part in [] if isinstance(content, str) else content:
            if part.get("type") == "image_url":
                encoded = part["image_url"]["url"].split(",", 1)[-1]
                digest = hashlib.sha256(base64.b64decode(encoded)).hexdigest()
                if digest in self.image_scripts:
                    return self.image_scripts[digest]
        return text

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self._health),
                Route("/v1/models", self._models),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _health(self, _: Request) -> Response:
        if self.health_stall_s:
            _hold_the_loop(self.health_stall_s)
        return Response(status_code=self.health_status)

    async def _models(self, _: Request) -> Response:
        card = {"id": MODEL, "object": "model", "created": 1, "owned_by": "fake", "root": "/x"}
        return JSONResponse({"object": "list", "data": [card]})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append((dict(request.headers), body))
        text = self._command(body["messages"][-1]["content"])
        command = text.split(":") if text.startswith("fake:") else ["fake", "ok"]
        action = command[1]
        if action == "status":
            status = int(command[2])
            error = {
                "message": "worker says no",
                "type": "BadRequestError",
                "param": "x",
                "code": status,
            }
            return JSONResponse({"error": error}, status_code=status)
        if action == "sleep":
            await asyncio.sleep(float(command[2]))
        if action == "hold":
            deadline = time.monotonic() + float(command[2])
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    self.disconnects += 1
                    return Response(status_code=499)
                await asyncio.sleep(0.01)
        if action == "garbage":
            return Response(b"<html>oops</html>", media_type="application/json")
        if action == "body":
            return Response(":".join(command[2:]).encode(), media_type="application/json")
        if action == "sleepsay":
            await asyncio.sleep(float(command[2]))
            action, command = "say", command[:2] + command[3:]
        if action == "gatesay":
            await self.gate(command[2]).wait()
            action, command = "say", command[:2] + command[3:]
        said = ":".join(command[2:]) if action == "say" else None
        if said is not None and body.get("stream"):
            return StreamingResponse(self._say(said), media_type="text/event-stream")
        if body.get("stream"):
            pace, count, stall = 0.0, 3, False
            if action == "pace":
                pace, count = int(command[2]) / 1000, int(command[3])
            elif action == "stall":
                count, stall = int(command[2]), True
            return StreamingResponse(
                self._stream(pace, count, stall), media_type="text/event-stream"
            )
        completion = {
            "id": "chatcmpl-" + request.headers.get("x-request-id", "none"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": said or "fake answer"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        return JSONResponse(completion)

    async def _say(self, text: str) -> AsyncIterator[bytes]:
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        events: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in pieces
        ]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 3, "completion_tokens": len(pieces), "total_tokens": 9}
        events.append({"choices": [], "usage": usage})
        for event in events:
            yield b"data: " + json.dumps({"object": "chat.completion.chunk", **event}).encode()
            yield b"\n\n"
            await asyncio.sleep(0.002)  # separate chunks, as a real worker sends them
        yield b"data: [DONE]\n\n"

    async def _stream(self, pace: float, count: int, stall: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            for i in range(count):
                chunk = {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                if pace:
                    await asyncio.sleep(pace)
            if stall:
                await asyncio.sleep(3600)
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                self.disconnects += 1


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # as CPU-bound work on the loop would
