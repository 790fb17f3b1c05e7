"""Errors that say what to fix (issue 27), through a gateway in front of the fake worker:
the allowed values in a refusal, the developer role, Android's wrapped base64, a base URL
without /v1, an unknown model, and a request id the gateway had to replace."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.doubles.fake_worker import FakeWorker
from tests.support.images import image_bytes
from tests.support.requests import MODEL, chat_body, image_chat_body

CHAT = "/v1/chat/completions"


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_the_developer_role_is_a_system_message(
    fake_gateway: str, fake_worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "developer-role hello"},
        ],
    }
    response = await http.post(fake_gateway + CHAT, json=body)
    assert response.status_code == 200, response.text
    sent = next(b for _, b in reversed(fake_worker.requests) if "developer-role" in str(b))
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"user": "u" * 300}, "user", "at most 256 characters"),
        ({"stop": ["a"] * 5}, "stop", "a string or a list of up to 4 strings"),
        ({"stop": 5}, "stop", "a string or a list of up to 4 strings"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto', 'required'"),
        ({"metadata": {"k": "v" * 600}}, "metadata", "at most 512 characters"),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            "^[a-zA-Z0-9_-]{1,64}$",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "a string or a list of 'text' and 'image_url' parts",
        ),
    ],
)
async def test_a_refusal_states_what_is_allowed(
    fake_gateway: str, http: httpx.AsyncClient, extra: dict[str, Any], param: str, says: str
) -> None:
    error = _error(await http.post(fake_gateway + CHAT, json=chat_body("hi", **extra)))
    assert error["param"] == param
    assert says in error["message"]


async def test_an_unknown_role_lists_the_roles(fake_gateway: str, http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "bot", "content": "hi"}]}
    error = _error(await http.post(fake_gateway + CHAT, json=body))
    assert error["param"] == "messages[0].role"
    for role in ("system", "developer", "user", "assistant", "tool"):
        assert f"'{role}'" in error["message"]


async def test_base64_with_line_breaks_is_named(fake_gateway: str, http: httpx.AsyncClient) -> None:
    # Android's Base64.DEFAULT wraps lines at 76 characters with "\n".
    encoded = base64.encodebytes(image_bytes(size=(96, 96))).decode()
    assert "\n" in encoded.strip()
    body = image_chat_body("what is it?", "data:image/png;base64," + encoded)
    error = _error(await http.post(fake_gateway + CHAT, json=body))
    assert error["code"] == "invalid_base64"
    assert "line breaks" in error["message"]
    assert "NO_WRAP" in error["message"]


async def test_a_path_without_v1_points_to_it(fake_gateway: str, http: httpx.AsyncClient) -> None:
    for path, where in (("/chat/completions", CHAT), ("/models", "/v1/models")):
        error = _error(await http.post(fake_gateway + path, json=chat_body()), 404)
        assert error["code"] == "not_found"
        assert where in error["message"]
        assert "/v1" in error["message"]
    plain = _error(await http.get(fake_gateway + "/nothing-here"), 404)
    assert plain["message"] == "Not found."


async def test_an_unknown_model_lists_the_served_ones(
    fake_gateway: str, http: httpx.AsyncClient
) -> None:
    error = _error(await http.post(fake_gateway + CHAT, json=chat_body(model="gpt-4o")), 404)
    assert error["code"] == "model_not_found"
    assert MODEL in error["message"]
    assert "gpt-4o" not in error["message"]  # the caller's value is never echoed
    image = base64.b64encode(image_bytes()).decode()
    vqa = {"image": image, "prompt": "what?", "model": "gpt-4o"}
    assert MODEL in _error(await http.post(fake_gateway + "/v1/vqa", json=vqa), 404)["message"]


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "ünïcode", "{braces}"])
async def test_a_replaced_request_id_is_said(
    fake_gateway: str, http: httpx.AsyncClient, sent: str
) -> None:
    headers = {b"X-Request-ID": sent.encode()}
    response = await http.post(fake_gateway + CHAT, json=chat_body(), headers=headers)
    assert response.status_code == 200
    assert response.headers["x-request-id"] != sent
    assert response.headers["x-request-id-replaced"] == "true"


async def test_a_plain_request_id_is_kept(fake_gateway: str, http: httpx.AsyncClient) -> None:
    sent = "trace-1.2:3_" + "x" * 116  # 128 characters of the allowed set
    headers = {"X-Request-ID": sent}
    response = await http.post(fake_gateway + CHAT, json=chat_body(), headers=headers)
    assert response.headers["x-request-id"] == sent
    assert "x-request-id-replaced" not in response.headers
    fresh = await http.post(fake_gateway + CHAT, json=chat_body())
    assert "x-request-id-replaced" not in fresh.headers
