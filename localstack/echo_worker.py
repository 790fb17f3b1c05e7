"""A worker double that answers every chat completion at once: for fuzzing the gateway,
and for measuring the gateway's own CPU (loadtest/bench/gateway_cpu.py).

    python -m localstack.echo_worker PORT

The fuzz test sends a thousand generated requests through the gateway in about a minute;
the real engine (tested end to end elsewhere) would take many minutes for the same. It
answers whatever the gateway forwards with a fixed, well-formed completion (streamed when
asked), so any 5xx or spec-breaking answer the fuzzer sees is the gateway's own.
A streamed answer has ECHO_STREAM_WORDS chunks (2: "echo", " answer"; more add " word"),
so a benchmark can stream as many chunks as the engine would send for its tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localstack.processes import LocalProcess, free_port, wait_http_ok
from worker.profiles import REPO_ROOT

MODEL = "qwen3-vl-tiny"
STREAM_WORDS = max(2, int(os.environ.get("ECHO_STREAM_WORDS", "2")))


async def _health(_: Request) -> Response:
    return Response(status_code=200)


async def _models(_: Request) -> Response:
    card = {"id": MODEL, "object": "model", "created": 1, "owned_by": "echo", "root": "/x"}
    return JSONResponse({"object": "list", "data": [card]})


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    completion: dict[str, Any] = {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo answer"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    ids = body.get("logprob_token_ids")
    if isinstance(ids, list):  # image-text matching asks for these (gateway/matching/)
        entries = [{"token": f"token_id:{i}", "logprob": -1.0 - n} for n, i in enumerate(ids)]
        content = [{"token": "token_id:0", "logprob": -1.0, "top_logprobs": entries}]
        completion["choices"][0]["logprobs"] = {"content": content}
    return completion


async def _tokenize(request: Request) -> Response:
    """One token per character (its code point): enough for matching's yes/no labels."""
    prompt = str(json.loads(await request.body()).get("prompt", ""))
    return JSONResponse({"tokens": [ord(c) for c in prompt], "count": len(prompt)})


async def _chunks(include_usage: bool) -> AsyncIterator[bytes]:
    for text in ("echo", " answer", *[" word"] * (STREAM_WORDS - 2)):
        chunk = {
            "id": "chatcmpl-echo",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    if include_usage:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        last = {"object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage}
        yield b"data: " + json.dumps(last).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def _chat(request: Request) -> Response:
    body = json.loads(await request.body())
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_chunks(include_usage), media_type="text/event-stream")
    return JSONResponse(_completion(body))


def app() -> Starlette:
    return Starlette(
        routes=[
            Route("/health", _health),
            Route("/v1/models", _models),
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/tokenize", _tokenize, methods=["POST"]),
        ]
    )


def start(log_dir: Path, stream_words: int = 2) -> LocalProcess:
    """This double as a process on a free port, returned once /health answers."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"echo-worker-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localstack.echo_worker", str(port)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ECHO_STREAM_WORDS": str(stream_words)},
        )
    worker = LocalProcess(f"echo-worker-{port}", process, port, log_path)
    wait_http_ok(worker, "/health", 30)
    return worker


if __name__ == "__main__":
    uvicorn.run(app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
