"""`helm test`: one real image request through the installed stack, then the same again.

Waits until a gateway has a healthy worker (/readyz?min_workers=1: plain /readyz is the
gateways' own readiness, true during a worker outage too), then checks the answer's shape
and X-Cache (the first answer a miss, the repeat a hit with the same text). With API keys
on, it creates a short-lived key in the database (`python3 -m gateway.auth create`) and
revokes it at the end. Standard library only: it runs in the gateway image and on a
developer's machine alike.

    python3 smoke_test.py --url http://GATEWAY:8000 --model NAME [--create-key] [--no-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from base64 import b64encode
from typing import Any

# Ready, with a worker to answer: the first request must be a real generation.
READY_PATH = "/readyz?min_workers=1"


def png_data_uri(width: int, height: int, rgb: tuple[int, int, int]) -> str:
    """A solid-colour PNG, built by hand (no Pillow in a test pod is needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(row * height))
    png += chunk(b"IEND", b"")
    return "data:image/png;base64," + b64encode(png).decode()


def wait_ready(url: str, timeout_s: float) -> float:
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + READY_PATH, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"FAIL: {url}{READY_PATH} not 200 within {timeout_s:.0f} s")
        time.sleep(1)


def chat(url: str, body: dict[str, Any], key: str | None) -> tuple[dict[str, Any], str, float]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), headers, method="POST"
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer, response.headers.get("X-Cache", ""), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"FAIL: HTTP {exc.code}: {exc.read()[:500]!r}") from None


def check_shape(answer: dict[str, Any]) -> str:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SystemExit(f"FAIL: no choices in {answer}")
    content = choices[0].get("message", {}).get("content")
    if not isinstance(content, str):
        raise SystemExit(f"FAIL: choices[0].message.content is not text: {answer}")
    usage = answer.get("usage") or {}
    if not isinstance(usage.get("prompt_tokens"), int) or usage["prompt_tokens"] <= 0:
        raise SystemExit(f"FAIL: usage.prompt_tokens missing: {answer}")
    return content


def create_key() -> tuple[str, str]:
    """A key from the gateway's own CLI (GATEWAY_LOG_DATABASE_URL names the database)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.auth", "create", "--name", "helm-test",
         "--rpm", "60", "--concurrent", "4"],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    )  # fmt: skip
    key = done.stdout.strip().splitlines()[-1]
    return key, key.split("-")[1]


def revoke_key(key_id: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway.auth", "revoke", key_id],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the gateway (or Nginx) base URL")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--create-key", action="store_true", help="API keys are on")
    parser.add_argument("--no-cache", action="store_true", help="the answer cache is off")
    parser.add_argument(
        "--pools", type=int, default=1,
        help="enabled worker pools: with several, the repeat may reach another checkpoint, "
        "whose answers are cached apart, so a miss is allowed there",
    )  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")

    ready_s = wait_ready(url, args.ready_timeout)
    key, key_id = create_key() if args.create_key else (None, "")
    try:
        # A colour and a nonce of this run's own: the first answer cannot be cached yet.
        nonce = time.time_ns()
        rgb = (nonce % 251, (nonce // 251) % 241, (nonce // 60491) % 239)
        body = {
            "model": args.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_uri(64, 48, rgb)}},
                {"type": "text", "text": f"helm test {nonce}: what colour is this?"},
            ]}],
            "max_tokens": 8,
            "temperature": 0,
        }  # fmt: skip
        first, first_cache, first_s = chat(url, body, key)
        text = check_shape(first)
        second, second_cache, second_s = chat(url, body, key)
        check_shape(second)
    finally:
        if key_id:
            revoke_key(key_id)
    expected = ("bypass", "bypass") if args.no_cache else ("miss", "hit")
    if args.pools > 1 and second_cache == "miss":
        expected = ("miss", "miss")
    if (first_cache, second_cache) != expected:
        raise SystemExit(f"FAIL: X-Cache {first_cache!r} then {second_cache!r}; want {expected}")
    if second_cache == "hit" and second["choices"][0]["message"]["content"] != text:
        raise SystemExit("FAIL: the cached answer differs from the first")
    print(json.dumps({
        "ok": True, "ready_s": round(ready_s, 3), "x_cache": [first_cache, second_cache],
        "first_s": round(first_s, 3), "second_s": round(second_s, 3),
        "prompt_tokens": first["usage"]["prompt_tokens"],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
