"""The optional image check: ask the served model a yes/no question about each image.

Verdicts are cached in Redis by image digest (and by model and question, so changing
either asks again), through the answer cache's circuit breaker; concurrent checks of the
same image in one process share one worker call. A check that fails (worker error,
timeout, an answer that is neither yes nor no) has no verdict: the caller lets the
request through and records ``check_failed:image`` (fail open: a worker hiccup must not
turn into refusals of clean photos; the text checks still apply), unless
``image_check_fail_closed`` makes it a 503. Failures are not cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.moderation.normalize import normalize
from gateway.moderation.settings import ModerationSettings
from gateway.redis_link import REDIS_FAILURES, RedisClient

# (body, request id, affinity key) -> the worker's 200 body; raises GatewayError.
AskWorker = Callable[[bytes, str, str], Awaitable[bytes]]
# Worker bodies larger than this are parsed in a thread (they carry the images).
_THREAD_PARSE_BYTES: Final = 32 * 1024
_VERDICT: Final = re.compile(r"(yes|no)\b|(是|有)|(否|不|没)")
_FLAGGED: Final = b"1"
_CLEAN: Final = b"0"
KEY_VERSION: Final = "v1"


class ImageCheckFailed(Exception):
    """No verdict for an image: the worker failed, was too slow, or answered neither."""


def parse_verdict(content: str) -> bool:
    """True for yes (the image breaks the policy), False for no."""
    match = _VERDICT.match(normalize(content).lstrip(" \"'*.:-"))
    if match is None:
        raise ImageCheckFailed("the answer is neither yes nor no")
    if match.group(1) is not None:
        return match.group(1) == "yes"
    return match.group(2) is not None


def _image_parts(body: bytes) -> list[dict[str, Any]]:
    payload = json.loads(body)
    return [
        part
        for message in payload.get("messages", [])
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


async def image_parts(body: bytes) -> list[dict[str, Any]]:
    """The image parts of a prepared worker body (data URIs), in order."""
    if len(body) > _THREAD_PARSE_BYTES:
        return await asyncio.to_thread(_image_parts, body)
    return _image_parts(body)


class ImageVerdicts:
    def __init__(
        self,
        settings: ModerationSettings,
        ask: AskWorker,
        metrics: Metrics,
        redis: RedisClient | None,
        breaker: CircuitBreaker | None,
        namespace: str,
    ) -> None:
        self._settings = settings
        self._ask = ask
        self._metrics = metrics
        self._redis = redis
        self._breaker = breaker
        self._namespace = namespace
        self._in_flight: dict[str, asyncio.Task[bool | None]] = {}

    def key(self, model: str, digest: str) -> str:
        question = hashlib.sha256(f"{model}\0{self._settings.image_question}".encode())
        return (
            f"{self._namespace}:moderation:{KEY_VERSION}:image:{question.hexdigest()[:16]}:{digest}"
        )

    async def flagged(self, model: str, digest: str, part: dict[str, Any], request_id: str) -> bool:
        """Whether the image breaks the policy; raises ImageCheckFailed."""
        key = self.key(model, digest)
        check = self._in_flight.get(key)
        if check is not None:
            self._metrics.moderation_image_verdicts.labels("shared").inc()
        else:
            # The check runs in a task of its own, not in the request that started it: that
            # request may be cancelled (its client left) while others wait for the verdict,
            # and only a real failure may count as "no verdict" for them.
            check = asyncio.ensure_future(self._verdict(key, model, digest, part, request_id))
            self._in_flight[key] = check
            check.add_done_callback(lambda _: self._in_flight.pop(key, None))
        verdict = await asyncio.shield(check)
        if verdict is None:
            raise ImageCheckFailed("no verdict")
        return verdict

    async def _verdict(
        self, key: str, model: str, digest: str, part: dict[str, Any], request_id: str
    ) -> bool | None:
        stored = await self._redis_call(lambda r: r.get(key))
        if stored in (_FLAGGED, _CLEAN):
            self._metrics.moderation_image_verdicts.labels("cache_hit").inc()
            return bool(stored == _FLAGGED)
        self._metrics.moderation_image_verdicts.labels("cache_miss").inc()
        try:
            verdict = await self._ask_worker(model, digest, part, request_id)
        except ImageCheckFailed:
            return None
        value = _FLAGGED if verdict else _CLEAN
        ttl = self._settings.image_verdict_ttl_s
        await self._redis_call(lambda r: r.set(key, value, ex=ttl))
        return verdict

    async def _ask_worker(
        self, model: str, digest: str, part: dict[str, Any], request_id: str
    ) -> bool:
        settings = self._settings
        body = {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [part, {"type": "text", "text": settings.image_question}],
                }
            ],
            "max_tokens": settings.image_check_max_tokens,
            "temperature": 0,
            "stream": False,
        }
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(settings.image_check_timeout_s):
                answer = await self._ask(raw, f"{request_id}-imgcheck", digest)
        except (GatewayError, TimeoutError) as exc:
            raise ImageCheckFailed(type(exc).__name__) from None
        try:
            content = json.loads(answer)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ImageCheckFailed("malformed answer") from None
        if not isinstance(content, str):
            raise ImageCheckFailed("malformed answer")
        return parse_verdict(content)

    async def _redis_call(self, operation: Callable[[RedisClient], Awaitable[Any]]) -> Any:
        """The operation's result; None when there is no Redis or it failed (the verdict is
        then asked again next time: a Redis outage costs worker calls, never refusals)."""
        if self._redis is None or self._breaker is None:
            return None
        redis = self._redis
        try:
            return await self._breaker.call(lambda: operation(redis), REDIS_FAILURES)
        except (BreakerOpen, *REDIS_FAILURES):
            return None
