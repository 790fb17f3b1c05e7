"""The load test's traffic, without Locust: what each simulated shopper sends, and how a
streamed answer is timed.

Kept apart from ``loadtest/locust/locustfile.py`` because importing Locust monkey-patches the
whole process with gevent; this module can be imported (and unit-tested) anywhere.

Traffic
-------
Each request asks a question (``loadtest.locust.questions``) about one synthetic product
photo (``loadtest.locust.photos``), sometimes two, in one of four shapes:

===============  ==========================================  ===========================
shape            request                                     stats name in Locust
===============  ==========================================  ===========================
``chat``         OpenAI chat completion, JSON answer         /v1/chat/completions
``chat_stream``  OpenAI chat completion, ``stream: true``    /v1/chat/completions [stream]
``vqa``          ``{"image","prompt","max_tokens"}``         /v1/vqa
``simple_chat``  the same simple shape, on the chat route    /v1/chat/completions [simple]
===============  ==========================================  ===========================

A share ``repeat_share`` of requests is about one of ``popular_products`` popular
products, each always the same photo, question and sampling: identical requests, so
the answer cache can serve them (``temperature`` is 0 in every chat request, which
makes them cacheable). Every other request gets a photo made fresh for it: a cache
miss, even across runs, because photo seeds are salted with the run's seed (random
unless fixed). The simple shape sends half of its repeated photos as bare base64 and
half as data URIs: the cache keys on the decoded image, so both spellings must hit.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from loadtest.locust.photos import SIZES, Photo, PhotoSpec, make_photo
from loadtest.locust.questions import SYSTEM_PROMPT, pick_comparison, pick_question

Shape = Literal["chat", "chat_stream", "vqa", "simple_chat"]
SHAPES: Final[tuple[Shape, ...]] = ("chat", "chat_stream", "vqa", "simple_chat")
STATS_NAMES: Final[dict[Shape, str]] = {
    "chat": "/v1/chat/completions",
    "chat_stream": "/v1/chat/completions [stream]",
    "vqa": "/v1/vqa",
    "simple_chat": "/v1/chat/completions [simple]",
}
PATHS: Final[dict[Shape, str]] = {
    "chat": "/v1/chat/completions",
    "chat_stream": "/v1/chat/completions",
    "vqa": "/v1/vqa",
    "simple_chat": "/v1/chat/completions",
}
DEFAULT_SHAPES: Final = "chat=3,chat_stream=3,vqa=2,simple_chat=1"
DEFAULT_SIZES: Final = "thumbnail=1.5,listing=3.5,square=2.5,phone=1.5,hd=1"


def parse_weights(text: str, allowed: tuple[str, ...] | None = None) -> dict[str, float]:
    """``"a=3,b=1"`` -> ``{"a": 3.0, "b": 1.0}``; unknown names and negative weights refused."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"weight {part!r} is not NAME=NUMBER")
        if allowed is not None and name not in allowed:
            raise ValueError(f"unknown name {name!r}; known: {', '.join(allowed)}")
        weight = float(value)
        if not weight >= 0:
            raise ValueError(f"weight of {name!r} must be >= 0")
        weights[name] = weight
    if not any(weights.values()):
        raise ValueError(f"no positive weight in {text!r}")
    return weights


@dataclass(frozen=True)
class WorkloadConfig:
    model: str = "qwen3-vl-tiny"
    repeat_share: float = 0.3
    popular_products: int = 8
    shape_weights: Mapping[str, float] = field(
        default_factory=lambda: parse_weights(DEFAULT_SHAPES, SHAPES)
    )
    size_weights: Mapping[str, float] = field(
        default_factory=lambda: parse_weights(DEFAULT_SIZES, tuple(SIZES))
    )
    max_tokens: int = 64
    temperature: float = 0.0
    chinese_share: float = 0.25
    two_image_share: float = 0.1
    seed: int | None = None  # None: a random salt, so fresh photos miss the cache across runs

    def __post_init__(self) -> None:
        for name in ("repeat_share", "chinese_share", "two_image_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value}")
        if self.popular_products < 1:
            raise ValueError("popular_products must be at least 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        parse_weights(",".join(f"{k}={v}" for k, v in self.shape_weights.items()), SHAPES)
        parse_weights(",".join(f"{k}={v}" for k, v in self.size_weights.items()), tuple(SIZES))


@dataclass(frozen=True)
class PlannedRequest:
    shape: Shape
    path: str
    name: str  # the entry in Locust's statistics
    body: dict[str, Any]
    repeated: bool
    photos: tuple[PhotoSpec, ...]

    @property
    def stream(self) -> bool:
        return self.shape == "chat_stream"


def chat_body(
    model: str,
    photos: list[Photo],
    question: str,
    max_tokens: int,
    temperature: float,
    stream: bool,
) -> dict[str, Any]:
    """An OpenAI chat completion with the photos as data URIs, then the question."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": p.data_uri()}} for p in photos
    ]
    content.append({"type": "text", "text": question})
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": content},
        ],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def simple_body(photo: Photo, prompt: str, max_tokens: int, data_uri: bool) -> dict[str, Any]:
    """The simple shape: ``{"image", "prompt", "max_tokens"}``."""
    image = photo.data_uri() if data_uri else photo.base64()
    return {"image": image, "prompt": prompt, "max_tokens": max_tokens}


class Workload:
    """Plans requests. Safe to share between Locust users (gevent switches only on I/O)."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        salt_source = random.Random(config.seed) if config.seed is not None else random.Random()
        self.salt = salt_source.getrandbits(40) << 20
        self._fresh = itertools.count(1 << 19)
        self._shapes = [s for s in SHAPES if config.shape_weights.get(s, 0.0) > 0]
        self._shape_weights = [config.shape_weights[s] for s in self._shapes]
        self._sizes = [s for s in config.size_weights if config.size_weights[s] > 0]
        self._size_weights = [config.size_weights[s] for s in self._sizes]

    def _size(self, rng: random.Random) -> str:
        return rng.choices(self._sizes, self._size_weights)[0]

    def popular(self, index: int) -> tuple[PhotoSpec, str]:
        """The photo and question of popular product ``index``: fixed for the run."""
        seed = self.salt + index
        rng = random.Random(f"popular:{seed}")
        spec = PhotoSpec.of_size(seed, self._size(rng))
        question = pick_question(rng, spec.resolved_kind(), self.config.chinese_share)
        return spec, question.text

    def next(self, rng: random.Random) -> PlannedRequest:
        config = self.config
        shape = rng.choices(self._shapes, self._shape_weights)[0]
        repeated = rng.random() < config.repeat_share
        if repeated:
            spec, question = self.popular(rng.randrange(config.popular_products))
            specs = [spec]
        else:
            specs = [PhotoSpec.of_size(self.salt + next(self._fresh), self._size(rng))]
            if shape in ("chat", "chat_stream") and rng.random() < config.two_image_share:
                specs.append(PhotoSpec.of_size(self.salt + next(self._fresh), self._size(rng)))
                question = pick_comparison(rng, config.chinese_share).text
            else:
                kind = specs[0].resolved_kind()
                question = pick_question(rng, kind, config.chinese_share).text
        photos = [make_photo(spec) for spec in specs]
        if shape in ("chat", "chat_stream"):
            body = chat_body(
                config.model,
                photos,
                question,
                config.max_tokens,
                config.temperature,
                stream=shape == "chat_stream",
            )
        else:
            body = simple_body(photos[0], question, config.max_tokens, data_uri=rng.random() < 0.5)
        return PlannedRequest(shape, PATHS[shape], STATS_NAMES[shape], body, repeated, tuple(specs))


# --- streamed answers ----------------------------------------------------------------------


@dataclass
class StreamResult:
    ttft_ms: float | None  # time to the first chunk with content
    itl_ms: list[float]  # gaps between successive content chunks
    text: str
    content_chunks: int
    done: bool  # the stream ended with data: [DONE]
    error: str | None  # an SSE error event, or data that is not JSON
    usage: dict[str, Any] | None
    total_ms: float

    @property
    def ok(self) -> bool:
        return self.done and self.error is None


class SSEReader:
    """Feed it the bytes of a streamed chat completion as they arrive, with the time each
    piece arrived (``time.perf_counter()``); it times the content chunks.

    Chunks that arrive in one read share a timestamp (an inter-token gap of 0), which is
    what the client saw. Lines other than ``data:`` (comments, ``event:``) are ignored.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self._buffer = b""
        self._last: float | None = None
        self._ttft_ms: float | None = None
        self._itl_ms: list[float] = []
        self._text: list[str] = []
        self._done = False
        self._error: str | None = None
        self._usage: dict[str, Any] | None = None
        self._end = start

    def feed(self, data: bytes, now: float) -> None:
        self._end = now
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line.rstrip(b"\r"), now)

    def _line(self, line: bytes, now: float) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            event = json.loads(payload)
        except ValueError:
            self._error = self._error or "an SSE data line is not JSON"
            return
        if not isinstance(event, dict):
            self._error = self._error or "an SSE event is not a JSON object"
            return
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            self._error = self._error or f"SSE error event: {message}"
            return
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self._token(content, now)

    def _token(self, content: str, now: float) -> None:
        if self._last is None:
            self._ttft_ms = (now - self.start) * 1000
        else:
            self._itl_ms.append((now - self._last) * 1000)
        self._last = now
        self._text.append(content)

    def finish(self, now: float | None = None) -> StreamResult:
        if self._buffer.strip():
            self._line(self._buffer.strip(), now if now is not None else self._end)
            self._buffer = b""
        end = now if now is not None else self._end
        return StreamResult(
            ttft_ms=self._ttft_ms,
            itl_ms=list(self._itl_ms),
            text="".join(self._text),
            content_chunks=len(self._text),
            done=self._done,
            error=self._error,
            usage=self._usage,
            total_ms=(end - self.start) * 1000,
        )
