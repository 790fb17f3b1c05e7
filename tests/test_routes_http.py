"""The gateway over HTTP (in-process uvicorn) in front of a fake worker: validation,
body limits, request ids, operations endpoints, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from gateway.interactions import InteractionLogSettings
from gateway.protocol import ErrorResponse
from gateway.streams import AnswerRecorder
from tests.doubles.fake_worker import FakeWorker
from tests.support.bad_requests import MARKER, BadCase, bad_cases
from tests.support.images import b64, image_bytes
from tests.support.mariadb import logged_rows
from tests.support.metrics import scrape, total
from tests.support.requests import MODEL, chat_body, vqa_body
from tests.support.servers import TEST_LIMITS, run_gateway

_REPRS = re.compile(r"Traceback|<class|object at 0x|pydantic|ValidationError|\{'|b'")


def assert_error(response: httpx.Response, status: int, code: str) -> ErrorResponse:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = ErrorResponse.model_validate_json(response.content)
    assert error.error.code == code
    assert error.error.type
    return error


async def send_case(client: httpx.AsyncClient, base: str, case: BadCase) -> httpx.Response:
    headers = {"content-type": case.content_type} if case.content_type else {}
    return await client.post(base + case.path, content=case.body, headers=headers)


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c.id)
async def test_bad_input_is_refused_before_the_worker(
    case: BadCase, fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    seen = len(fake_worker.requests)
    response = await send_case(http, fake_gateway, case)
    error = assert_error(response, case.status, case.code)
    assert MARKER not in response.text
    assert not _REPRS.search(error.error.message), error.error.message
    assert len(fake_worker.requests) == seen
    assert response.headers["x-request-id"]


async def test_good_requests_reach_the_worker(
    fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    png = b64(image_bytes())
    seen = len(fake_worker.requests)
    chat = await http.post(f"{fake_gateway}/v1/chat/completions", json=chat_body("hi"))
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "fake answer"
    for path in ("/v1/chat/completions", "/v1/vqa"):
        simple = await http.post(fake_gateway + path, json=vqa_body(png, "what?"))
        assert simple.status_code == 200
        assert simple.json() == {"text": "fake answer"}
    assert len(fake_worker.requests) == seen + 3
    forwarded = fake_worker.requests[-1][1]
    assert forwarded["max_tokens"] == TEST_LIMITS["default_max_tokens"]
    assert forwarded["messages"][0]["content"][0]["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )


# --- body size -----------------------------------------------------------------------------


async def _raw_exchange(
    base: str, head: bytes, chunks: list[bytes], pause: float = 0.0
) -> tuple[bytes, int]:
    """Send a request over a raw socket; return (response, chunks sent before it arrived)."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head)
        await writer.drain()
        sent = 0
        response = b""
        for chunk in chunks:
            try:
                response = await asyncio.wait_for(reader.read(65536), timeout=pause or 0.001)
            except TimeoutError:
                response = b""
            if response:
                break
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
        while b"\r\n\r\n" not in response:
            more = await asyncio.wait_for(reader.read(65536), timeout=5)
            if not more:
                break
            response += more
        return response, sent
    finally:
        writer.close()


async def test_declared_length_over_limit_is_refused_before_reading(fake_gateway: str) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 999999999\r\n\r\n"
    )
    response, _ = await _raw_exchange(fake_gateway, head, [b"{"] * 50, pause=0.02)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"body_too_large" in response


async def test_chunked_body_over_limit_is_refused_while_reading(fake_gateway: str) -> None:
    limit = TEST_LIMITS["max_body_bytes"]
    piece = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (4 * limit // len(piece))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    response, sent = await _raw_exchange(fake_gateway, head, chunks, pause=0.01)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"body_too_large" in response
    # Refused once the limit was crossed, not after the whole (4x larger) body.
    assert sent * len(piece) < 2 * limit


async def test_body_just_under_the_limit_is_read(
    fake_gateway: str, http: httpx.AsyncClient
) -> None:
    body = json.dumps(chat_body("x")).encode()
    padded = body[:-1] + b" " * (TEST_LIMITS["max_body_bytes"] - len(body)) + b"}"
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions",
        content=padded,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200


async def test_body_read_deadline_bounds_the_body_not_the_answer(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    async with run_gateway(fake_worker.url, body_read_timeout_s=0.3) as gateway:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 100\r\n\r\n"
        )
        # Half the body, then silence: 408 at the deadline.
        response, _ = await _raw_exchange(gateway, head, [b'{"model": '], pause=0.0)
        assert response.startswith(b"HTTP/1.1 408")
        assert b"body_read_timeout" in response
        # A stream that lasts longer than the deadline is not cut: it covers the body only.
        body = chat_body("fake:pace:100:8", stream=True)
        async with http.stream("POST", f"{gateway}/v1/chat/completions", json=body) as answer:
            assert answer.status_code == 200
            events = (await answer.aread()).split(b"\n\n")
        assert events[-2] == b"data: [DONE]"
        assert sum(b"error" in event for event in events) == 0


# --- request ids ---------------------------------------------------------------------------


async def test_request_id_is_generated_and_propagated(
    fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    response = await http.post(f"{fake_gateway}/v1/chat/completions", json=chat_body())
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert fake_worker.requests[-1][0]["x-request-id"] == request_id
    assert response.json()["id"] == f"chatcmpl-{request_id}"


@pytest.mark.parametrize(
    ("sent", "kept"), [("client-id.42:a_b", True), ("x" * 200, False), ("a b<script>", False)]
)
async def test_callers_request_id(
    sent: str, kept: bool, fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": sent}
    )
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert (echoed == sent) is kept
    assert fake_worker.requests[-1][0]["x-request-id"] == echoed


async def test_request_id_on_errors(fake_gateway: str, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{fake_gateway}/v1/chat/completions", content=b"{", headers={"X-Request-ID": "err-1"}
    )
    assert response.headers["x-request-id"] == "err-1"


# --- routing errors, operations endpoints --------------------------------------------------


async def test_unknown_path_and_wrong_method(fake_gateway: str, http: httpx.AsyncClient) -> None:
    assert_error(await http.get(f"{fake_gateway}/v2/nothing"), 404, "not_found")
    response = await http.get(f"{fake_gateway}/v1/chat/completions")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_health_ready_models(fake_gateway: str, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{fake_gateway}/healthz")).json() == {"status": "ok"}
    ready = await http.get(f"{fake_gateway}/readyz")
    assert ready.json() == {"status": "ready", "healthy_workers": 1, "total_workers": 1}
    models = (await http.get(f"{fake_gateway}/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert "root" not in models["data"][0]  # local paths stay inside


async def test_metrics(fake_worker: FakeWorker, http: httpx.AsyncClient) -> None:
    # A gateway of its own: its counters hold exactly this test's requests.
    async with run_gateway(fake_worker.url) as gateway:
        await _until_ready(http, gateway)
        await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
        await http.post(f"{gateway}/v1/chat/completions", json=chat_body(max_tokens=0))
        await http.post(f"{gateway}/v1/chat/completions", json=chat_body(stream=True))
        await http.get(f"{gateway}/no/such/path/{MARKER}")
        samples = await scrape(http, gateway)
    route = 'route="/v1/chat/completions"'

    def count(status: str) -> float:
        return total(
            samples, "gateway_requests_total", lambda k: route in k and f'status="{status}"' in k
        )

    assert (count("200"), count("400")) == (2, 1)
    assert total(samples, "gateway_request_duration_seconds_count", lambda k: route in k) == 3
    assert total(samples, "gateway_time_to_first_token_seconds_count") == 1  # the stream
    errors = {k: v for k, v in samples.items() if k.startswith("gateway_errors_total{")}
    assert errors == {
        'gateway_errors_total{code="invalid_max_tokens"}': 1,
        'gateway_errors_total{code="not_found"}': 1,
    }
    assert total(samples, "gateway_requests_total", lambda k: "unmatched" in k) == 1
    assert not any(MARKER in k for k in samples)  # raw paths never become labels
    assert samples["gateway_requests_in_flight{}"] == 1  # the scrape itself
    assert total(samples, "gateway_worker_healthy") == 1


async def _until_ready(http: httpx.AsyncClient, gateway: str) -> None:
    """Wait for the first health check of the worker (readyz 200), at most 30 s."""
    for _ in range(600):
        if (await http.get(f"{gateway}/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never became ready")


# --- the OpenAPI document ------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_declares_bodies_errors_and_limits(
    fake_gateway: str, http: httpx.AsyncClient
) -> None:
    spec = (await http.get(f"{fake_gateway}/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for ref in _refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path in ("/v1/chat/completions", "/v1/vqa"):
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        for status in ("400", "404", "413", "415", "502", "503", "504"):
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        assert "422" not in operation["responses"]  # we answer 400, never FastAPI's 422
    # Every /v1/* operation passes through API keys and rate limits (gateway/admission.py).
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    max_tokens = schemas["ChatCompletionRequest"]["properties"]["max_tokens"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": TEST_LIMITS["max_tokens_cap"]} in max_tokens
    assert schemas["ChatCompletionRequest"]["additionalProperties"] is False
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


async def test_a_bug_mid_stream_is_logged_as_our_server_error(
    fake_worker: FakeWorker,
    log_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception that is not a GatewayError, raised after the stream's 200: the client
    gets our error event and [DONE], the log row and the gateway's log name a server error
    (it was logged as a client that left, status 200)."""
    real = AnswerRecorder.observe

    def broken(self: AnswerRecorder, data: bytes) -> bool:
        if b'"t1"' in data:  # the fake worker's second chunk
            raise RuntimeError("a bug")
        return real(self, data)

    monkeypatch.setattr(AnswerRecorder, "observe", broken)
    log = InteractionLogSettings(
        database_url=SecretStr(log_database_url), spool_path=tmp_path / "spool.jsonl",
        flush_interval_s=0.05,
    )  # fmt: skip
    request_id = f"bug-{uuid.uuid4().hex}"
    async with run_gateway(fake_worker.url, log=log) as url:
        stream = await read_stream_with_id(url, chat_body("x", stream=True), request_id)
    assert stream[-1] == "[DONE]"
    assert json.loads(stream[-2])["error"]["code"] == "internal_error"
    (row,) = await asyncio.to_thread(logged_rows, log_database_url, request_id)
    assert (row["status_code"], row["error_type"], row["error_code"]) == (
        500, "server_error", "internal_error",
    )  # fmt: skip
    assert "RuntimeError: a bug" in caplog.text


async def read_stream_with_id(url: str, body: dict[str, Any], request_id: str) -> list[str]:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}
        ) as response,
    ):
        assert response.status_code == 200
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
