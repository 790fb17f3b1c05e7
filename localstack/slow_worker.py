"""A worker double whose every answer takes a fixed time, and which counts what it is asked:
for the coalescing drills (loadtest/bench/coalesce_drills.py), where a generation must last
long enough to kill its leader in the middle of it.

    python -m localstack.slow_worker PORT SECONDS

GET /count answers how many chat completions it has been asked for, finished or not.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localstack.echo_worker import MODEL
from localstack.processes import LocalProcess, free_port, wait_http_ok
from worker.profiles import REPO_ROOT


def app(seconds: float) -> Starlette:
    asked = 0

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        card = {"id": MODEL, "object": "model", "created": 1, "owned_by": "slow", "root": "/x"}
        return JSONResponse({"object": "list", "data": [card]})

    async def count(_: Request) -> Response:
        return JSONResponse({"chat_requests": asked})

    async def chat(request: Request) -> Response:
        nonlocal asked
        asked += 1
        body = json.loads(await request.body())
        if body.get("stream"):
            return StreamingResponse(_chunks(asked), media_type="text/event-stream")
        await asyncio.sleep(seconds)  # the generation
        return JSONResponse(
            {
                "id": f"chatcmpl-slow-{asked}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"answer {asked}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    async def _chunks(number: int) -> AsyncIterator[bytes]:
        """The same answer in six pieces, spread over the generation."""
        for piece in ("ans", "wer", " ", str(number), "", ""):
            await asyncio.sleep(seconds / 6)
            delta = {"content": piece} if piece else {}
            chunk = {"object": "chat.completion.chunk", "model": MODEL,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        end = {"object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
        counts = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        usage = {"object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": counts}
        for event in (end, usage):
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/count", count),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def start(log_dir: Path, seconds: float) -> LocalProcess:
    """This double as a process on a free port, returned once /health answers."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"slow-worker-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localstack.slow_worker", str(port), str(seconds)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = LocalProcess(f"slow-worker-{port}", process, port, log_path)
    wait_http_ok(worker, "/health", 30)
    return worker


if __name__ == "__main__":
    uvicorn.run(
        app(float(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning"
    )
