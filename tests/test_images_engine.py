"""Phone photos against the real vLLM CPU engine, through a gateway process: the token
estimate counts each photo's image tokens as the worker's own image processor does (the
engine's reported prompt_tokens), whether the gateway or the worker shrinks the photo;
and a tagged photo reaches the worker upright."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.ratelimit.estimate import PixelBounds, image_tokens, smart_resize
from gateway.validation.detail import low_detail_size
from localstack.processes import LocalProcess, start_gateway
from tests.support.images import data_uri
from tests.support.photos import phone_photo
from tests.support.requests import MODEL
from tests.support.worker import LOG_DIR

pytestmark = pytest.mark.engine

# The tiny model's preprocessor_config.json (worker/tiny_model.py): shortest_edge 65,536,
# longest_edge 2,097,152 pixels.
TINY = PixelBounds(min_pixels=65_536, max_pixels=2_097_152)
PHOTOS = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 960)]
# A reference image whose token count both sides agree on (300): the difference of two
# prompts' tokens is then the difference of their images' tokens alone.
REFERENCE = (640, 480)


def _gateway(worker_url: str, env: dict[str, str], **extra: str) -> LocalProcess:
    return start_gateway(
        [worker_url],
        LOG_DIR,
        env={
            **env,
            "GATEWAY_CACHE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
            "GATEWAY_MAX_BODY_BYTES": str(16 * 1024 * 1024),
            "GATEWAY_IMAGE_PROCESSOR_MAX_PIXELS": str(TINY.max_pixels),
            **extra,
        },
    )


@pytest.fixture(scope="module")
def gateways(worker_url: str, gateway_process_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Two gateways: the default policy (the gateway shrinks a phone photo to 2,097,152
    pixels) and one that sends photos as they are (the worker's processor shrinks them)."""
    shrinks = _gateway(worker_url, gateway_process_env)
    as_sent = _gateway(
        worker_url, gateway_process_env, GATEWAY_IMAGE_HIGH_DETAIL_PIXELS=str(4096 * 4096)
    )
    yield {"gateway": shrinks.url, "worker": as_sent.url}
    shrinks.stop()
    as_sent.stop()


async def _prompt_tokens(url: str, size: tuple[int, int], question: str) -> int:
    part = {"type": "image_url", "image_url": {"url": data_uri(phone_photo(*size), "image/jpeg")}}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": question}]}],
        "max_tokens": 1,
        "temperature": 0,
    }
    async with httpx.AsyncClient(timeout=300) as client:
        response = await client.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


@pytest.mark.parametrize("who_shrinks", ["gateway", "worker"])
async def test_the_estimate_counts_a_photos_tokens_as_the_worker_does(
    gateways: dict[str, str], who_shrinks: str
) -> None:
    url = gateways[who_shrinks]
    question = f"What is it? {uuid.uuid4().hex}"
    reference = await _prompt_tokens(url, REFERENCE, question)
    for width, height in PHOTOS:
        worker_count = await _prompt_tokens(url, (width, height), question) - reference + 300
        sent = (width, height)
        if who_shrinks == "gateway" and width * height > 2048 * 32 * 32:
            sent = low_detail_size(width, height, 2048 * 32 * 32)
        assert image_tokens(*sent, TINY) == worker_count, (width, height)
        # The estimate before issue 27 counted the photo's own sides on the grid.
        old = round(width / 32) * round(height / 32)
        print(f"{width}x{height}: worker {worker_count}, estimate {image_tokens(*sent, TINY)}, "
              f"before {old}, processor size {smart_resize(*sent, TINY)}")  # fmt: skip
