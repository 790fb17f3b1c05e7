"""A Triton pool's engine: health, models and load from Triton's own endpoints, and each
request's exchange (KServe v2 generate_stream) behind the interface the proxy uses for
vLLM workers.

A worker is alive while ``/v2/health/live`` answers, and ready when ``/v2/health/ready``
(with --strict-readiness: every model ready) and the model's own
``/v2/models/<name>/ready`` do. Alive but not ready is a worker loading or draining
(SIGTERM): it gets no new requests, and the ones it has are not given up on. Load comes
from Triton's metrics port: the model's ``nv_inference_pending_request_count`` plus
vLLM's scheduler gauges when the model exports them (ours does; NVIDIA's official
backend exports only counters and histograms, so its pools are balanced on the pending
count alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway import json_text
from gateway.errors import ErrorCode, GatewayError
from gateway.upstream.bodies import read_limited
from gateway.upstream.kserve.template import ChatTemplate, read_chat_template
from gateway.upstream.kserve.translate import (
    EventReader,
    EventTranslator,
    generate_body,
    triton_error,
)
from gateway.upstream.load import Load, parse_triton_load
from gateway.upstream.settings import TritonPool

if TYPE_CHECKING:
    from gateway.upstream.pool import Worker

# Bodies translated on the loop up to this size, in a thread above (a photo's data URI).
_ON_LOOP_BODY_BYTES: Final = 256 * 1024
_METRICS_BODY_LIMIT: Final = 4 * 1024 * 1024
_ANSWER_BODY_LIMIT: Final = 64 * 1024 * 1024


class _Chunks(Protocol):
    """The proxy's stream of a worker's raw bytes (proxy.UpstreamStream)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...

    def discard(self) -> None: ...


class TritonStream:
    """A Triton worker's event stream as OpenAI chat completion chunks."""

    def __init__(self, raw: _Chunks, translator: EventTranslator) -> None:
        self._raw = raw
        self._chunks = raw.__aiter__()
        self._translator = translator
        self._reader = EventReader()
        self._ended = False
        self._failed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._ended:
            try:
                events = self._reader.feed(await self._chunks.__anext__())
            except StopAsyncIteration:
                self._ended = True
                events = self._reader.close()
            out = b"".join(self._translate(event) for event in events)
            if self._ended and not self._failed:
                if not self._translator.finishes:
                    raise GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's stream broke off.")
                out += self._translator.end()
            if out:
                return out
        raise StopAsyncIteration

    def _translate(self, event: dict[str, Any]) -> bytes:
        if self._failed:
            return b""
        self._failed = triton_error(event) is not None
        return self._translator.chunks(event)

    def close(self) -> None:
        self._ended = True
        self._raw.close()

    def discard(self) -> None:
        self._ended = True
        self._raw.discard()


@dataclass(frozen=True)
class TritonCall:
    """One request's exchange with one Triton pool's workers."""

    path: str
    body: bytes
    model: str

    async def answer(self, response: aiohttp.ClientResponse) -> bytes:
        """The OpenAI completion from a non-streamed request's events."""
        raw = await read_limited(response, _ANSWER_BODY_LIMIT)
        reader = EventReader()
        events = reader.feed(raw) + reader.close()
        return EventTranslator(self.model).answer(events)

    def stream(self, raw: _Chunks) -> TritonStream:
        return TritonStream(raw, EventTranslator(self.model))


def _translate(body: bytes, template: ChatTemplate) -> tuple[bytes, str]:
    payload = json_text.loads(body)
    return generate_body(payload, template), str(payload.get("model", ""))


@dataclass(eq=False)
class TritonEngine:
    """What the pool and the proxy need to serve one Triton pool."""

    spec: TritonPool
    template: ChatTemplate = field(init=False)

    def __post_init__(self) -> None:
        # Read once, at start-up: a missing template stops the gateway before it serves.
        self.template = ChatTemplate(read_chat_template(self.spec.chat_template))

    @property
    def path(self) -> str:
        return f"/v2/models/{self.spec.model}/generate_stream"

    @property
    def models(self) -> tuple[tuple[dict[str, Any], ...], dict[str, str]]:
        """The model card this pool serves, and its checkpoint as cache keys see it."""
        card = {
            "id": self.spec.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "triton",
            "max_model_len": self.spec.max_model_len,
        }
        return (card,), {self.spec.served_model: self.spec.cache_root}

    async def call(self, body: bytes) -> TritonCall:
        """The request translated for this engine (a large body in a thread)."""
        if len(body) > _ON_LOOP_BODY_BYTES:
            translated, model = await asyncio.to_thread(_translate, body, self.template)
        else:
            translated, model = _translate(body, self.template)
        return TritonCall(self.path, translated, model)

    def metrics_url(self, worker_url: str) -> str:
        parts = urlsplit(worker_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        port += self.spec.metrics_port_offset
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return urlunsplit((parts.scheme, f"{host}:{port}", "/metrics", "", ""))

    async def poll(
        self,
        session: aiohttp.ClientSession,
        worker: Worker,
        note_load: Callable[[Worker, Load], None] | None,
    ) -> bool:
        """Whether the worker is alive; its readiness (``draining``), models and load
        (to ``note_load``, unless None) on the way."""
        async with session.get(worker.url + "/v2/health/live") as response:
            if response.status != 200:
                return False
        ready = True
        for path in ("/v2/health/ready", f"/v2/models/{self.spec.model}/ready"):
            async with session.get(worker.url + path) as response:
                ready = ready and response.status == 200
        worker.draining = not ready
        worker.models, worker.roots = self.models
        if not ready or note_load is None:
            return True
        async with session.get(self.metrics_url(worker.url)) as response:
            if response.status != 200:
                return True
            raw = await read_limited(response, _METRICS_BODY_LIMIT)
        load = parse_triton_load(raw.decode("utf-8", "replace"), self.spec.model)
        if load is not None:
            note_load(worker, load)
        return True


class TritonRequests:
    """One request's translations, made once per engine on first use (retries reuse)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._calls: dict[int, TritonCall] = {}

    async def route(
        self, worker_url: str, engine: TritonEngine | None, path: str
    ) -> tuple[str, bytes, TritonCall | None]:
        """Where the request goes and what it sends: as it is to a vLLM worker (no
        engine), translated to a Triton one."""
        if engine is None:
            return worker_url + path, self._body, None
        call = self._calls.get(id(engine))
        if call is None:
            call = self._calls[id(engine)] = await engine.call(self._body)
        return worker_url + call.path, call.body, call
