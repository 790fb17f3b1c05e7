"""A prompt over the model's context length, against the real vLLM CPU engine (issue 27):
OpenAI's code, context_length_exceeded, with the limit and the prompt's token count the
worker reported, in JSON and to the official SDK, streaming or not."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.support.requests import MODEL, chat_body
from tests.support.servers import run_gateway

pytestmark = pytest.mark.engine

# The cpu-tiny profile serves max_model_len 8192; this text is one token a character in
# the tiny model's tokenizer, and within the gateway's default 16,000-character limit.
LONG_PROMPT = "zqxj" * 3000


@pytest.fixture(scope="module")
async def gateway(worker_url: str) -> AsyncIterator[str]:
    async with run_gateway(worker_url, max_prompt_chars=16_000) as url:
        yield url


def _assert_context_message(message: str) -> None:
    found = re.search(r"The prompt has (\d+) tokens .*context length of (\d+) tokens", message)
    assert found is not None, message
    tokens, limit = int(found[1]), int(found[2])
    assert limit == 8192
    assert tokens > limit


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_context_length(
    gateway: str, http: httpx.AsyncClient, stream: bool
) -> None:
    body = chat_body(LONG_PROMPT, max_tokens=4, stream=stream)
    response = await http.post(gateway + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("context_length_exceeded", "invalid_request_error")
    assert error["param"] == "messages"
    _assert_context_message(error["message"])


async def test_the_sdk_sees_openais_code(gateway: str) -> None:
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused") as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=4
            )
    assert refused.value.code == "context_length_exceeded"
