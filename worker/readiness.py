"""Readiness: a worker is ready only once it has answered a warm-up image request.

vLLM's /health turns 200 as soon as the engine is up, but the first image
request still pays for lazy initialisation (processor, vision encoder kernels).
A load balancer that sent users there first would show them that cost, so the
launcher sends one small image request itself and only then marks the worker
ready, by writing a ready file that readiness probes and scripts check.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from worker.sample_image import png_data_uri


def _get_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(base_url: str, deadline: float, still_running: Callable[[], bool]) -> bool:
    """Poll /health until 200, the deadline passes, or still_running() is false."""
    while time.monotonic() < deadline:
        if not still_running():
            return False
        if _get_ok(f"{base_url}/health", timeout=2.0):
            return True
        time.sleep(1.0)
    return False


def warm_up(base_url: str, model: str, api_key: str | None, timeout: float) -> dict[str, object]:
    """Send one image+text chat completion; return the parsed response or raise."""
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_uri(64, 64)}},
                    {"type": "text", "text": "warm-up: describe this image"},
                ],
            }
        ],
        "max_tokens": 2,
        "temperature": 0,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        parsed: dict[str, object] = json.loads(response.read())
    if not parsed.get("choices"):
        raise RuntimeError("warm-up response has no choices")
    return parsed


def mark_ready(ready_file: Path) -> None:
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.write_text(str(time.time()))


def clear_ready(ready_file: Path) -> None:
    ready_file.unlink(missing_ok=True)
