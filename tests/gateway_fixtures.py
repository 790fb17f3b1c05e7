"""Fixtures and helpers for the gateway tests: images made with Pillow, an in-process
uvicorn runner, a scriptable fake worker, and the catalogue of bad requests.

Loaded by the gateway test modules with ``pytest_plugins = ["tests.gateway_fixtures"]``;
the real worker (``worker_url``) comes from tests/conftest.py. The modules also import
helpers from here, before pytest sees their ``pytest_plugins``, so assertion rewriting is
off for this module: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.config import Settings
from gateway.interactions import InteractionLogSettings

MODEL = "qwen3-vl-tiny"
MARKER = "MARKER-7f3a9c"  # put into payloads; must never come back in an error message

# Limits shared by every test gateway (small, so each limit is cheap to cross).
TEST_LIMITS: dict[str, Any] = {
    "max_body_bytes": 256 * 1024,
    "max_images": 2,
    "max_image_pixels": 1_000_000,
    "max_tokens_cap": 1500,
    "default_max_tokens": 16,
    "max_prompt_chars": 2000,
}


# --- images --------------------------------------------------------------------------------


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), **save: Any) -> bytes:
    from PIL import Image

    image = Image.new("RGB", size, (180, 40, 40))
    for x in range(0, size[0], 8):  # some structure, so encoders do real work
        image.putpixel((x, x % size[1]), (0, 200, 0))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_header_bomb(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, then a baseline SOF0 claiming width x height."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def chat_body(
    content: Any = "hello",
    *,
    model: str = MODEL,
    **extra: Any,
) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def image_message(text: str, *uris: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return [*parts, {"type": "text", "text": text}]


# --- the catalogue of bad requests ---------------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    id: str
    status: int
    code: str
    body: bytes
    path: str = "/v1/chat/completions"
    content_type: str | None = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def bad_cases() -> list[BadCase]:
    """Every invalid input the gateway must refuse before anything reaches a worker."""
    png = image_bytes("PNG")
    gif = image_bytes("GIF")
    text = f"what is this? {MARKER}"
    one = data_uri(png)

    def chat(status: int, code: str, case_id: str, **kwargs: Any) -> BadCase:
        content = kwargs.pop("content", text)
        return BadCase(case_id, status, code, _json(chat_body(content, **kwargs)))

    def with_image(uri: str) -> list[dict[str, Any]]:
        return image_message(text, uri)

    cases = [
        BadCase("body-over-limit", 413, "body_too_large", _json(chat_body("x" * 300_000))),
        BadCase("not-json", 400, "invalid_json", f'{{"model": "{MARKER}",'.encode()),
        BadCase("json-array", 400, "invalid_json", b"[1, 2, 3]"),
        BadCase("not-utf8", 400, "invalid_json", b'{"model": "\xff\xfe"}'),
        BadCase(
            "text-plain",
            415,
            "unsupported_media_type",
            _json(chat_body(text)),
            content_type="text/plain",
        ),
        BadCase(
            "form-encoded",
            415,
            "unsupported_media_type",
            b"model=x",
            content_type="application/x-www-form-urlencoded",
        ),
        BadCase(
            "no-content-type", 415, "unsupported_media_type", _json(chat_body()), content_type=None
        ),
        chat(404, "model_not_found", "unknown-model", model=f"gpt-{MARKER}"),
        BadCase("missing-messages", 400, "missing_messages", _json({"model": MODEL})),
        BadCase("empty-messages", 400, "missing_messages", _json({"model": MODEL, "messages": []})),
        BadCase(
            "missing-model",
            400,
            "missing_model",
            _json({"messages": [{"role": "user", "content": text}]}),
        ),
        BadCase("simple-missing-prompt", 400, "missing_prompt", _json({"image": b64(png)})),
        BadCase(
            "vqa-missing-prompt", 400, "missing_prompt", _json({"image": b64(png)}), path="/v1/vqa"
        ),
        BadCase(
            "vqa-empty-prompt",
            400,
            "missing_prompt",
            _json({"image": b64(png), "prompt": ""}),
            path="/v1/vqa",
        ),
        BadCase("vqa-missing-image", 400, "missing_image", _json({"prompt": text}), path="/v1/vqa"),
        chat(
            400,
            "invalid_base64",
            "base64-bad-chars",
            content=with_image(f"data:image/png;base64,{MARKER}!!"),
        ),
        chat(
            400, "invalid_base64", "base64-newlines", content=with_image(one[:60] + "\n" + one[60:])
        ),
        chat(400, "invalid_base64", "base64-no-padding", content=with_image(one.rstrip("=") + "A")),
        chat(
            400,
            "invalid_base64",
            "base64-urlsafe",
            content=with_image("data:image/png;base64,ab-_"),
        ),
        BadCase(
            "vqa-bad-base64",
            400,
            "invalid_base64",
            _json({"image": f"{MARKER}%%", "prompt": text}),
            path="/v1/vqa",
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-gif",
            content=with_image(data_uri(gif, "image/gif")),
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-svg",
            content=with_image(data_uri(b"<svg/>", "image/svg+xml")),
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-text",
            content=with_image(data_uri(b"hello", "text/plain")),
        ),
        chat(
            400,
            "invalid_image_url",
            "not-base64-data-uri",
            content=with_image("data:image/png,rawbytes"),
        ),
        chat(
            400, "invalid_image", "not-an-image", content=with_image(data_uri(MARKER.encode() * 20))
        ),
        chat(
            400, "invalid_image", "gif-declared-png", content=with_image(data_uri(gif, "image/png"))
        ),
        chat(
            400,
            "invalid_image",
            "truncated-png",
            content=with_image(data_uri(png[: len(png) // 2])),
        ),
        chat(400, "invalid_image", "png-signature-only", content=with_image(data_uri(png[:8]))),
        chat(
            400,
            "image_too_large",
            "png-bomb",
            content=with_image(data_uri(png_header_bomb(20000, 20000))),
        ),
        chat(
            400,
            "image_too_large",
            "jpeg-bomb",
            content=with_image(data_uri(jpeg_header_bomb(30000, 30000), "image/jpeg")),
        ),
        BadCase(
            "vqa-bomb",
            400,
            "image_too_large",
            _json({"image": b64(png_header_bomb(5000, 5000)), "prompt": text}),
            path="/v1/vqa",
        ),
        chat(400, "too_many_images", "three-images", content=image_message(text, one, one, one)),
        chat(400, "invalid_max_tokens", "max-tokens-zero", max_tokens=0),
        chat(400, "invalid_max_tokens", "max-tokens-negative", max_tokens=-5),
        chat(400, "invalid_max_tokens", "max-tokens-over-cap", max_tokens=1501),
        chat(
            400, "invalid_max_tokens", "max-completion-tokens-over-cap", max_completion_tokens=10**9
        ),
        chat(400, "invalid_max_tokens", "max-tokens-string", max_tokens="10"),
        chat(400, "invalid_max_tokens", "max-tokens-float", max_tokens=1.5),
        BadCase(
            "vqa-max-tokens-zero",
            400,
            "invalid_max_tokens",
            _json({"image": b64(png), "prompt": text, "max_tokens": 0}),
            path="/v1/vqa",
        ),
        chat(400, "invalid_temperature", "temperature-negative", temperature=-0.1),
        chat(400, "invalid_temperature", "temperature-too-high", temperature=2.5),
        chat(400, "invalid_top_p", "top-p-zero", top_p=0),
        chat(400, "invalid_top_p", "top-p-too-high", top_p=1.5),
        chat(400, "prompt_too_long", "prompt-too-long", content="x" * 2001),
        BadCase(
            "vqa-prompt-too-long",
            400,
            "prompt_too_long",
            _json({"image": b64(png), "prompt": "y" * 2001}),
            path="/v1/vqa",
        ),
        chat(
            400,
            "remote_image_url_unsupported",
            "https-image-url",
            content=with_image(f"https://example.com/{MARKER}.png"),
        ),
        chat(
            400,
            "remote_image_url_unsupported",
            "http-image-url",
            content=with_image("http://x/a.jpg"),
        ),
        chat(400, "unsupported_parameter", "unknown-field", logprobs=True),
        chat(400, "invalid_request", "empty-stop-string", stop=[""]),
        BadCase(
            "lone-surrogate",
            400,
            "invalid_request",
            _json(chat_body(f"{text} \ud800")),  # json.dumps writes it as an escape
        ),
        chat(
            400,
            "invalid_request",
            "stream-options-without-stream",
            stream_options={"include_usage": True},
        ),
        chat(
            400, "invalid_request", "unknown-part-type", content=[{"type": "audio", "data": MARKER}]
        ),
        chat(400, "invalid_request", "content-number", content=5),
        BadCase(
            "role-tool",
            400,
            "invalid_request",
            _json({"model": MODEL, "messages": [{"role": "tool", "content": text}]}),
        ),
    ]
    # JSON has no NaN/Infinity, but Python's parser (and many clients) accept them.
    for name, value in (("nan", "NaN"), ("infinity", "Infinity"), ("minus-infinity", "-Infinity")):
        for param, code in (("temperature", "invalid_temperature"), ("top_p", "invalid_top_p")):
            raw = _json(chat_body(text))[:-1] + f', "{param}": {value}}}'.encode()
            cases.append(BadCase(f"{param}-{name}", 400, code, raw))
    return cases


# --- in-process servers --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn (httptools) in this event loop, on a free port by default."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


def gateway_settings(*worker_urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **TEST_LIMITS,
        "worker_urls": worker_urls,
        "health_interval_s": 0.5,
        # Cache and log have tests of their own (test_cache_http, test_interactions_http);
        # here every request must reach the worker, and no database is needed.
        "cache_enabled": False,
        "log": InteractionLogSettings(enabled=False),
        # API keys and rate limits have tests of their own (test_auth_http, ...).
        "auth": AuthSettings(enabled=False),
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def run_gateway(*worker_urls: str, **overrides: Any) -> AsyncIterator[str]:
    async with serve(create_app(gateway_settings(*worker_urls, **overrides))) as url:
        yield url


# --- a scriptable fake worker --------------------------------------------------------------


@dataclass
class FakeWorker:
    """A stand-in for vLLM whose behaviour is chosen by the last user text.

    ``fake:status:<code>``  answer with that status and a vLLM-style error body
    ``fake:sleep:<s>``      wait before answering
    ``fake:hold:<s>``       wait, watching for the caller to hang up (counted in disconnects)
    ``fake:pace:<ms>:<n>``  stream n chunks, one every ms milliseconds
    ``fake:stall:<n>``      stream n chunks, then go silent
    ``fake:garbage``        answer 200 with a body that is not a completion
    ``fake:say:<text>``     a complete answer with that text (streamed in 4-character
                            chunks, with finish_reason and usage, when asked)
    ``fake:sleepsay:<s>:<text>``  the same after waiting s seconds
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
    scripts: dict[str, str] = field(default_factory=dict)
    image_scripts: dict[str, str] = field(default_factory=dict)

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
        if action == "sleepsay":
            await asyncio.sleep(float(command[2]))
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


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def fake_worker() -> AsyncIterator[FakeWorker]:
    worker = FakeWorker()
    async with serve(worker.app()) as url:
        worker.url = url
        yield worker


@pytest.fixture(scope="session")
async def fake_gateway(fake_worker: FakeWorker) -> AsyncIterator[str]:
    """A gateway in front of the fake worker, with short timeouts."""
    async with run_gateway(fake_worker.url, first_byte_timeout_s=1.0, total_timeout_s=2.0) as url:
        yield url


@pytest.fixture(scope="session")
async def gateway_url(worker_url: str) -> AsyncIterator[str]:
    """A gateway in front of the real worker."""
    async with run_gateway(worker_url) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


# --- worker metrics ------------------------------------------------------------------------


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """Prometheus samples as {'name{label="v",...}': value}, labels sorted."""
    response = await client.get(f"{base_url}/metrics")
    response.raise_for_status()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(
    samples: dict[str, float], name: str, where: Callable[[str], bool] = lambda _: True
) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and where(k))
