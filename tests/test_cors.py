"""CORS (issue 27): off by default (call the API from your backend; keys never belong in a
browser), and an allow-list, GATEWAY_CORS_ORIGINS, for those who want browsers to call it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from gateway.config import Settings
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import run_gateway

CHAT = "/v1/chat/completions"
ALLOWED = "https://shop.example"


def _preflight(origin: str, headers: str = "authorization,content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


async def test_no_cors_headers_by_default(fake_worker: FakeWorker, http: httpx.AsyncClient) -> None:
    assert Settings().cors_origins == ()
    async with run_gateway(fake_worker.url) as url:
        preflight = await http.options(url + CHAT, headers=_preflight(ALLOWED))
        answer = await http.post(url + CHAT, json=chat_body(), headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405  # as before: no route answers OPTIONS
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_an_allowed_origin_passes_preflight_and_reads_our_headers(
    fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    async with run_gateway(fake_worker.url, cors_origins=(ALLOWED,)) as url:
        # The openai JS SDK sends its own x-stainless-* headers: any request header passes.
        preflight = await http.options(
            url + CHAT, headers=_preflight(ALLOWED, "authorization,x-stainless-lang")
        )
        answer = await http.post(url + CHAT, json=chat_body(), headers={"Origin": ALLOWED})
        refused = await http.post(url + "/v1/vqa", json={}, headers={"Origin": ALLOWED})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-stainless-lang" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers  # keys, not cookies
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    exposed = answer.headers["access-control-expose-headers"].lower()
    for header in ("x-request-id", "x-cache", "x-ratelimit-remaining-tokens", "retry-after"):
        assert header in exposed
    # Errors too, or a browser app cannot read what went wrong.
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == ALLOWED


async def test_another_origin_is_refused(fake_worker: FakeWorker, http: httpx.AsyncClient) -> None:
    async with run_gateway(fake_worker.url, cors_origins=(ALLOWED,)) as url:
        preflight = await http.options(url + CHAT, headers=_preflight("https://evil.example"))
        answer = await http.post(
            url + CHAT, json=chat_body(), headers={"Origin": "https://evil.example"}
        )
    assert preflight.status_code == 400
    assert preflight.json()["error"]["code"] == "invalid_request"  # our one error shape
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in answer.headers


def test_origins_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example, http://localhost:3000/")
    assert Settings().cors_origins == ("https://a.example", "http://localhost:3000")
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example/app")
    with pytest.raises(ValidationError, match="origin"):
        Settings()
