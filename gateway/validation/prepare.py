"""Prepare: a typed request (parse.py) -> the body a worker will receive.

Everything here runs before any byte goes to a worker. Cheap checks come first (model,
token and prompt limits, image count) and the image checks, which decode base64, last.
Error messages are built from our own limits, never from the offending value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.images import (
    CheckedImage,
    ImageInfo,
    ImageLimits,
    check_image,
    check_image_bytes,
    is_remote_url,
)
from gateway.protocol import (
    ChatCompletionRequest,
    ImagePart,
    StreamOptions,
    TextPart,
    VQARequest,
)
from gateway.ratelimit.estimate import PixelBounds, image_tokens
from gateway.remote_images import RemoteImageFetcher, fetch_remote_references
from gateway.validation.bounds import MESSAGE_OVERHEAD_CHARS, heavy_work, off_loop_if
from gateway.validation.detail import DetailBudgets, apply_detail
from gateway.validation.encode import LAZY_BODY_MAX_BYTES, WorkerJSON, canonical_request
from gateway.validation.features import (
    NO_FEATURES,
    Features,
    read_features,
    worker_payload,
)
from gateway.validation.pixels import PixelCheck, pixel_check

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated request, ready to forward; what the later stages key on."""

    model: str
    stream: bool
    worker_json: WorkerJSON  # the JSON the worker receives: see ``body``
    images: tuple[ImageInfo, ...]
    # The request's text, as moderation, the token estimate and the log see it.
    prompt: str
    prompt_chars: int
    # The answer's token limit the worker applies (what the token estimate charges).
    token_budget: int
    # Where the text sits in the client's request, for error params: "messages" or "prompt".
    prompt_param: str
    # The request as cache keys see it: images as digests, shape-only fields dropped.
    canonical: bytes
    temperature: float | None
    seed: int | None
    # Streams always ask the worker for usage (the cache and the log need it); this says
    # whether the client asked for it too, or the usage event is dropped on the way.
    client_wants_usage: bool
    # Structured outputs, tools, logprobs, n and bookkeeping (validation/features.py).
    features: Features = NO_FEATURES
    # Messages in the request: each costs template tokens in the estimate (bounds.py).
    messages: int = 1
    # The images' tokens as the checkpoint's image processor counts them (the estimate).
    image_tokens: int = 0
    # The full decode of the images, still to run before a worker sees them (pixels.py).
    pixels: PixelCheck = field(default_factory=PixelCheck)

    @property
    def body(self) -> bytes:
        """The JSON the worker receives, encoded on first use (WorkerJSON)."""
        return self.worker_json.encoded()


@dataclass(frozen=True, slots=True)
class _Text:
    prompt: str
    chars: int
    token_budget: int
    param: str


# --- typed request -> prepared request -----------------------------------------------------


def _check_model(model: str, known: frozenset[str]) -> None:
    if not known:
        raise GatewayError(ErrorCode.NO_HEALTHY_WORKER, "No worker has reported its models yet.")
    if model not in known:
        served = ", ".join(sorted(known)[:10])  # names from our workers, never the caller's
        raise GatewayError(
            ErrorCode.MODEL_NOT_FOUND,
            f"The requested model is not served here; use one of: {served} (GET /v1/models).",
            param="model",
        )


def _check_max_tokens(value: int | None, name: str, settings: Settings) -> None:
    if value is not None and value > settings.max_tokens_cap:
        raise GatewayError(
            ErrorCode.INVALID_MAX_TOKENS,
            f"'{name}' must be at most {settings.max_tokens_cap}.",
            param=name,
        )


def _check_prompt(chars: int, settings: Settings, param: str) -> None:
    if chars > settings.max_prompt_chars:
        raise GatewayError(
            ErrorCode.PROMPT_TOO_LONG,
            f"The prompt has {chars} characters; the limit is {settings.max_prompt_chars}.",
            param=param,
        )


def _check_image_count(count: int, settings: Settings, param: str) -> None:
    if count > settings.max_images:
        raise GatewayError(
            ErrorCode.TOO_MANY_IMAGES,
            f"The request has {count} images; the limit is {settings.max_images}.",
            param=param,
        )


def _limits(settings: Settings) -> ImageLimits:
    # The full decode is not part of preparing: it runs before a worker sees the images,
    # after the cache lookup (pixels.py), so a cache hit never decodes pixels.
    return ImageLimits(max_pixels=settings.max_image_pixels, verify_decode=False)


def _check_one(
    reference: str, data: bytes | None, limits: ImageLimits, param: str, bare_base64: bool
) -> CheckedImage:
    if data is not None:
        return check_image_bytes(data, limits, param=param)
    return check_image(reference, limits, allow_bare_base64=bare_base64, param=param)


def detail_budgets(settings: Settings) -> DetailBudgets:
    return DetailBudgets(
        low=settings.image_low_detail_pixels, high=settings.image_high_detail_pixels
    )


def pixel_bounds(settings: Settings) -> PixelBounds:
    return PixelBounds(settings.image_processor_min_pixels, settings.image_processor_max_pixels)


@dataclass(frozen=True, slots=True)
class ChatContent:
    """What one walk over the messages finds: the prompt text, its size, and the images."""

    prompt: str
    chars: int
    images: list[tuple[ImagePart, str]]  # the part and its param path


def read_chat(request: ChatCompletionRequest) -> ChatContent:
    """Walk the messages once; the checks and the interaction log both use the result."""
    texts: list[str] = []
    chars = 0
    images: list[tuple[ImagePart, str]] = []
    for i, message in enumerate(request.messages):
        if message.content is None:  # an assistant message with tool_calls only
            continue
        if isinstance(message.content, str):
            texts.append(message.content)
            chars += len(message.content)
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, TextPart):
                texts.append(part.text)
                chars += len(part.text)
            else:
                images.append((part, f"messages[{i}].content[{j}].image_url.url"))
    return ChatContent("\n".join(texts), chars, images)


def answer_limit(request: ChatCompletionRequest, settings: Settings) -> int:
    """The answer's token limit as vLLM applies it: max_completion_tokens takes precedence
    over max_tokens. Charging and checking by any other order would let a request pay
    for one token and get thousands."""
    return request.max_completion_tokens or request.max_tokens or settings.default_max_tokens


def _check_chat_limits(
    request: ChatCompletionRequest,
    content: ChatContent,
    settings: Settings,
    known_models: frozenset[str],
) -> None:
    """The cheap checks, before any image is decoded: model, token limits, stream options,
    prompt size and image count."""
    _check_model(request.model, known_models)
    _check_max_tokens(request.max_tokens, "max_tokens", settings)
    _check_max_tokens(request.max_completion_tokens, "max_completion_tokens", settings)
    limit = answer_limit(request, settings)
    if request.min_tokens is not None and request.min_tokens > limit:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            "'min_tokens' must not exceed the answer's token limit.",
            param="min_tokens",
        )
    if request.stream_options is not None and not request.stream:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            "'stream_options' is only allowed with 'stream': true.",
            param="stream_options",
        )
    # Each message counts its template overhead too: an empty message is not free.
    overhead = MESSAGE_OVERHEAD_CHARS * len(request.messages)
    _check_prompt(content.chars + overhead, settings, "messages")
    _check_image_count(len(content.images), settings, "messages")


async def _chat_image_checks(
    images: list[tuple[ImagePart, str]],
    settings: Settings,
    fetcher: RemoteImageFetcher | None,
) -> tuple[Callable[[], list[CheckedImage]], bool]:
    """Fetch remote images, then return the checks still to run and whether they are
    heavy enough for a thread (by base64 size and by the pixels the headers declare).

    Inline images are checked before any fetch goes out, so a request refused for one of
    them sends nothing out; the rest is left to the caller's one thread hop."""
    limits = _limits(settings)
    references = [(part.image_url.url, p) for part, p in images]
    # Which images detail "low" may shrink (re-encode): work for the thread decision.
    low = [part.image_url.detail == "low" for part, _ in images]
    budgets = detail_budgets(settings)
    early: dict[int, CheckedImage] = {}
    if fetcher is not None and any(is_remote_url(ref) for ref, _ in references):
        inline = [(i, ref, p) for i, (ref, p) in enumerate(references) if not is_remote_url(ref)]
        early = await off_loop_if(
            heavy_work(
                references=[ref for _, ref, _ in inline],
                low_detail=[low[i] for i, _, _ in inline],
                low_detail_pixels=budgets.low,
                high_detail_pixels=budgets.high,
            ),
            lambda: {
                i: _check_one(ref, None, limits, p, bare_base64=False) for i, ref, p in inline
            },
        )
    fetched = await fetch_remote_references(references, fetcher)

    def check() -> list[CheckedImage]:
        return [
            early.get(i) or _check_one(ref, data, limits, p, bare_base64=False)
            for i, ((ref, p), data) in enumerate(zip(references, fetched, strict=True))
        ]

    unchecked = [i for i in range(len(references)) if i not in early]
    heavy = heavy_work(
        references=[references[i][0] for i in unchecked],
        fetched=[fetched[i] for i in unchecked],
        low_detail=[low[i] for i in unchecked],
        low_detail_pixels=budgets.low,
        high_detail_pixels=budgets.high,
    )
    return check, heavy


async def prepare_chat(
    request: ChatCompletionRequest,
    settings: Settings,
    known_models: frozenset[str],
    fetcher: RemoteImageFetcher | None = None,
    content: ChatContent | None = None,
) -> PreparedRequest:
    """Check a chat request against the limits; the returned body is what the worker gets.

    ``content`` is the request's ``read_chat`` when the caller already has it. The
    request's image URLs are replaced in place by their checked data URIs; http(s) URLs
    are fetched by ``fetcher`` (None: remote images are off, and refused).
    """
    content = content if content is not None else read_chat(request)
    _check_chat_limits(request, content, settings, known_models)
    features = read_features(request, settings)
    if request.max_tokens is None and request.max_completion_tokens is None:
        request.max_tokens = settings.default_max_tokens  # never forward an unbounded request
    budget = answer_limit(request, settings)
    wants_usage = bool(request.stream_options and request.stream_options.include_usage)
    if request.stream:
        request.stream_options = StreamOptions(include_usage=True)
    text = _Text(content.prompt, content.chars, budget, "messages")
    check_images, heavy = await _chat_image_checks(content.images, settings, fetcher)
    # Validation was done in a thread for a large body (parse.py); what remains grows with
    # the messages (model_dump, encoding, the canonical key) and the images.
    heavy = heavy or heavy_work(messages=len(request.messages), text_chars=content.chars)

    def finish() -> PreparedRequest:
        limits, budgets = _limits(settings), detail_budgets(settings)
        checked = [
            apply_detail(image, part.image_url.detail, budgets, limits, param)
            for (part, param), image in zip(content.images, check_images(), strict=True)
        ]
        for (part, _), image in zip(content.images, checked, strict=True):
            part.image_url.url = image.data_uri
        payload = worker_payload(request)
        prepared = _prepared(
            request.model,
            request.stream,
            payload,
            checked,
            text,
            wants_usage,
            settings,
            features.uuid_salt,
        )
        params = [param for _, param in content.images]
        pixels = pixel_check(checked, params, settings.verify_image_decode)
        return dataclasses.replace(
            prepared, features=features, messages=len(request.messages), pixels=pixels
        )

    return await off_loop_if(heavy, finish)


async def prepare_vqa(
    request: VQARequest,
    settings: Settings,
    known_models: frozenset[str],
    fetcher: RemoteImageFetcher | None = None,
) -> PreparedRequest:
    """The simple shape becomes a one-message chat request: image first, then the prompt."""
    model = request.model or settings.default_model or min(known_models, default="")
    _check_model(model, known_models)
    _check_max_tokens(request.max_tokens, "max_tokens", settings)
    _check_prompt(len(request.prompt), settings, "prompt")
    limits = _limits(settings)
    (fetched,) = await fetch_remote_references([(request.image, "image")], fetcher)

    def finish() -> PreparedRequest:
        image = _check_one(request.image, fetched, limits, "image", bare_base64=True)
        image = apply_detail(image, request.detail, detail_budgets(settings), limits, "image")
        payload: dict[str, Any] = {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image.data_uri}},
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            "max_tokens": request.max_tokens or settings.default_max_tokens,
            # The simple shape has no sampling controls: it answers greedily, so the same
            # photo and question get the same answer, and that answer is cacheable.
            "temperature": 0,
            "stream": False,
        }
        text = _Text(request.prompt, len(request.prompt), payload["max_tokens"], "prompt")
        prepared = _prepared(model, False, payload, [image], text, False, settings)
        pixels = pixel_check([image], ["image"], settings.verify_image_decode)
        return dataclasses.replace(prepared, pixels=pixels)

    heavy = heavy_work(
        references=[request.image],
        fetched=[fetched],
        low_detail=[request.detail == "low"],
        low_detail_pixels=settings.image_low_detail_pixels,
        high_detail_pixels=settings.image_high_detail_pixels,
    )
    return await off_loop_if(heavy, finish)


def _prepared(
    model: str,
    stream: bool,
    payload: dict[str, Any],
    images: list[CheckedImage],
    text: _Text,
    client_wants_usage: bool,
    settings: Settings,
    uuid_salt: str | None = None,
) -> PreparedRequest:
    infos = tuple(image.info for image in images)
    digests = [info.sha256 for info in infos]
    # First: it refuses a lone surrogate with the 400 the body's encoding would give.
    canonical = canonical_request(payload, digests)
    uuids = None
    if settings.worker_image_uuids:
        uuids = digests if uuid_salt is None else [f"{d}.{uuid_salt}" for d in digests]
    body = WorkerJSON(payload, uuids)
    if len(canonical) + sum(len(image.data_uri) for image in images) > LAZY_BODY_MAX_BYTES:
        body.encoded()
    bounds = pixel_bounds(settings)
    return PreparedRequest(
        image_tokens=sum(image_tokens(i.width, i.height, bounds) for i in infos),
        model=model,
        stream=stream,
        worker_json=body,
        images=infos,
        prompt=text.prompt,
        prompt_chars=text.chars,
        token_budget=text.token_budget,
        prompt_param=text.param,
        canonical=canonical,
        temperature=payload.get("temperature"),
        seed=payload.get("seed"),
        client_wants_usage=client_wants_usage,
    )
