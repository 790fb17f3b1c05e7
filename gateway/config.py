"""Gateway settings, read from the environment (prefix ``GATEWAY_``) and validated at start-up.

A bad value stops the process before it binds a port: on-call sees the mistake in the
start-up log instead of in the first user's error.
"""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.auth.settings import AuthSettings
from gateway.batch.settings import BatchSettings
from gateway.interactions.settings import InteractionLogSettings
from gateway.matching.settings import MatchSettings
from gateway.moderation.settings import ModerationSettings
from gateway.ratelimit.settings import RateLimitSettings
from gateway.remote_images.settings import RemoteImageSettings
from gateway.upstream.settings import PoolSpec, check_worker_urls, parse_pools, single_pool

# Pillow warns above this many pixels and refuses at twice as many; our own cap must stay
# below it so that Pillow never sees an image we have not already sized up ourselves.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485
_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")


def check_origins(value: object) -> object:
    """A comma-separated string or a list -> a tuple of scheme://host[:port] (or "*")."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return value
    origins = tuple(str(part).strip().rstrip("/") for part in value if str(part).strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"CORS origin {origin!r} must be scheme://host[:port], no path")
    return origins


class Settings(BaseSettings):
    """Everything the gateway can be told. Times are in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Workers. GATEWAY_WORKER_URLS is a comma-separated list, e.g. "http://a:8100,http://b:8100".
    worker_urls: Annotated[tuple[str, ...], NoDecode] = ("http://127.0.0.1:8100",)
    # Discovery (gateway/upstream/discovery.py): names whose every DNS address is a worker, e.g. a
    # Kubernetes headless service "http://vllm-workers.ns.svc.cluster.local:8000",
    # resolved every discovery_interval_s. With names set, worker_urls may be empty.
    worker_dns: Annotated[tuple[str, ...], NoDecode] = ()
    discovery_interval_s: float = Field(default=10.0, gt=0)
    # Named pools with weights, for canary rollouts (gateway/upstream/settings.py): a JSON
    # list replacing worker_urls and worker_dns, e.g. stable 95 and canary 5.
    worker_pools: Annotated[tuple[PoolSpec, ...], NoDecode] = ()
    worker_api_key: SecretStr | None = None
    # Model used by the simple {"image","prompt"} shape; None: the first model the workers list.
    default_model: str | None = None

    # Request limits, all enforced before anything reaches a worker.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # The whole body must arrive within this long, else 408: a client trickling bytes holds
    # only its own connection. Nginx's client_body_timeout guards the same in front; this
    # guards a gateway reached without Nginx.
    body_read_timeout_s: float = Field(default=60.0, gt=0)
    max_images: int = Field(default=2, ge=0)
    # Messages per request (OpenAI's limit) and content parts per message: counted before
    # the typed validation, whose cost grows with both (gateway/validation/bounds.py).
    max_messages: int = Field(default=2048, gt=0)
    max_content_parts: int = Field(default=256, gt=0)
    # Bodies over 1 MB are parsed in a child process (gateway/validation/offload.py); start
    # it with the replica, so its imports (seconds of CPU) do not land on the first such
    # request. Off: started at the first one (tests that build many apps in one process).
    parse_process_warm: bool = True
    max_image_pixels: int = Field(default=4096 * 4096, gt=0, le=PILLOW_MAX_IMAGE_PIXELS)
    max_tokens_cap: int = Field(default=2048, gt=0)
    default_max_tokens: int = Field(default=256, gt=0)
    max_prompt_chars: int = Field(default=16_000, gt=0)
    # image_url.detail "low": larger images are scaled down to this many pixels (sides on
    # Qwen3-VL's 32-pixel grid): 512 x 512 = 256 image tokens (gateway/validation/detail.py).
    image_low_detail_pixels: int = Field(default=512 * 512, ge=32 * 32)
    # image_url.detail "high", "auto" or none: larger images are scaled down to this many
    # pixels, as the image processor would scale them to its max_pixels (docs/IMAGES.md):
    # 2,048 image tokens, a phone's 4032 x 3024 photo at 1664 x 1248; 1920 x 1080 as sent.
    image_high_detail_pixels: int = Field(default=2048 * 32 * 32, ge=32 * 32)
    # The checkpoint's image processor (its preprocessor_config.json: size.shortest_edge
    # and size.longest_edge): the token estimate counts an image as the worker resizes it.
    # Qwen3-VL-8B-Instruct's values; the tiny CPU model's longest_edge is 2,097,152.
    image_processor_min_pixels: int = Field(default=64 * 32 * 32, ge=32 * 32)
    image_processor_max_pixels: int = Field(default=16_384 * 32 * 32, ge=32 * 32)
    # Choices per request (n); OpenAI allows 128, each one is a full generation here.
    max_choices: int = Field(default=4, ge=1, le=128)
    # Tools per request (OpenAI's limit is 128) and the bounds of every JSON schema
    # (response_format and each tool's parameters; gateway/validation/schema_bounds.py).
    max_tools: int = Field(default=128, ge=0, le=128)
    max_schema_bytes: int = Field(default=32 * 1024, gt=0)
    max_schema_depth: int = Field(default=10, ge=1, le=64)
    max_schema_branches: int = Field(default=64, ge=0)
    max_schema_pattern_chars: int = Field(default=256, ge=0)
    # Decode every image fully (in a thread) so truncated or corrupt files get a 400 here
    # rather than an error from the worker. Costs gateway CPU; the header checks stay on.
    verify_image_decode: bool = True

    # Upstream timeouts. first_byte covers the wait for the first streamed chunk (queueing
    # and prefill); total bounds the whole exchange, non-streaming answers included.
    connect_timeout_s: float = Field(default=2.0, gt=0)
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    total_timeout_s: float = Field(default=600.0, gt=0)
    # A started stream with no chunk for this long is ended with an error event: a worker
    # sends one per token, so silence this long means a stuck generation.
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    upstream_max_connections: int = Field(default=512, gt=0)

    # Answer cache and request coalescing in Redis (gateway/cache/).
    cache_enabled: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"
    # redis_url is one node of a Redis Cluster (the others are read from it): answers,
    # coalescing and rate limits spread over its slots (gateway/redis_link.py).
    redis_cluster: bool = False
    # Keys are "<namespace>:v<format>:answer:<sha256>": one Redis can serve several stacks.
    cache_namespace: str = Field(default="vlm", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cache_ttl_s: int = Field(default=3600, gt=0)
    cache_max_value_bytes: int = Field(default=64 * 1024, gt=0)
    # Cache sampled answers that carry an explicit seed (greedy ones are always cacheable).
    cache_seeded_requests: bool = True
    # Hot answers in each replica's memory, in front of Redis (gateway/cache/local.py): the
    # same keys, a short TTL, bounded in bytes; a hot hit then costs no Redis round trip.
    # 0 bytes: off.
    cache_local_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    cache_local_ttl_s: float = Field(default=10.0, gt=0)
    # Bodies whose answers were found in the cache, kept prepared by their bytes
    # (gateway/cache/recall.py): the next identical body skips parsing, image checks and
    # key derivation. 0 bytes: off.
    cache_recall_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # Near-duplicate photos (gateway/cache/near/, docs/NEAR_DUPLICATES.md): after an exact
    # miss, a stored answer to the same question about the same photo in another encoding
    # is served (X-Cache: similar) to keys created with `--cache near`. Off by default.
    # Bounds: the hash's Hamming distance (of 256; at most 31 is sure to be found), the worst
    # 3x3 window's colour difference (CIELAB Delta E) and detail (luminance levels).
    cache_near_enabled: bool = False
    cache_near_max_distance: int = Field(default=31, ge=0, le=31)
    cache_near_colour_max: float = Field(default=10.0, ge=0)
    cache_near_detail_max: float = Field(default=9.0, ge=0)
    # Candidates verified per lookup, closest first.
    cache_near_candidates: int = Field(default=4, ge=1, le=32)
    # Part of every key: change it when the workers' checkpoint changes under the same name.
    model_revision: str = "1"
    # Redis on the request path must answer fast or be skipped: a local Redis answers in
    # well under a millisecond. The deadline counts only time this replica's event loop
    # was responsive (gateway/loop_lag.py): a loop held by other work does not make a
    # healthy Redis time out. Past 8x the deadline in wall time the call gives up anyway.
    redis_socket_timeout_s: float = Field(default=0.25, gt=0)
    redis_breaker_open_s: float = Field(default=5.0, gt=0)
    # Consecutive failures (errors, or deadlines the loop's lag does not explain) that open
    # the breaker: never one late read.
    redis_breaker_failures: int = Field(default=2, ge=1)
    coalesce_enabled: bool = True
    # A waiter gives up and calls a worker itself after this long: as long as a leader may
    # take (total_timeout_s), since a lease its leader keeps renewing proves it is alive.
    coalesce_wait_timeout_s: float = Field(default=600.0, gt=0)
    # The leader's lease, renewed every third of it while it generates: when its replica
    # dies, the waiters elect a new leader within this long (gateway/cache/coalesce.py).
    coalesce_lease_s: float = Field(default=10.0, gt=0)
    # Idempotency-Key (gateway/cache/idempotency.py, docs/IDEMPOTENCY.md): how long a key
    # keeps its first body and that body's answer. An hour covers an SDK's retries
    # (seconds) and an app's retry after a network change or a trip to the background
    # (minutes), at the answer cache's own memory bound; Stripe keeps 24 h (86400).
    idempotency_ttl_s: int = Field(default=3600, gt=0)

    # The interaction log (GATEWAY_LOG_*; see gateway/interactions/settings.py).
    log: InteractionLogSettings = Field(default_factory=InteractionLogSettings)
    # http(s) image URLs, fetched by the gateway (GATEWAY_REMOTE_IMAGES_*; off by default;
    # see gateway/remote_images/settings.py).
    remote_images: RemoteImageSettings = Field(default_factory=RemoteImageSettings)
    # Content policy on prompts, images and answers (GATEWAY_MODERATION_*; on by default,
    # the image check off; see gateway/moderation/settings.py).
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    # API keys on /v1/* (GATEWAY_AUTH_*; required by default; see gateway/auth/settings.py).
    auth: AuthSettings = Field(default_factory=AuthSettings)
    # Per-key limits in Redis (GATEWAY_RATELIMIT_*; see gateway/ratelimit/settings.py).
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # The Batch API and its runner (GATEWAY_BATCH_*; see gateway/batch/settings.py).
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # Image-text matching, POST /v1/match (GATEWAY_MATCH_*; gateway/matching/settings.py).
    match: MatchSettings = Field(default_factory=MatchSettings)

    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # "https://shop.example,http://localhost:3000"; "*" for any. Empty (the default): no
    # CORS headers, browsers cannot read answers. Call us from your backend (gateway/cors.py).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    # Health polling of the workers, used by /readyz and by the choice of worker.
    health_interval_s: float = Field(default=2.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    # Read each worker's load (running, waiting, KV-cache usage) from its /metrics on every
    # health poll; the choice of worker prefers the least loaded.
    load_poll_enabled: bool = True

    # Worker pool (gateway/upstream/pool.py). Passive ejection: this many consecutive failed
    # exchanges (connect errors, 503s, broken connections before the first byte) open the
    # worker's breaker for worker_breaker_open_s, then one real request probes it.
    worker_breaker_failures: int = Field(default=3, ge=1)
    worker_breaker_open_s: float = Field(default=5.0, gt=0)
    # Failed attempts before any byte reached the client are retried on another worker, at
    # most this many times, after a random pause of up to upstream_retry_jitter_s.
    upstream_retries: int = Field(default=2, ge=0)
    upstream_retry_jitter_s: float = Field(default=0.05, ge=0)
    # Image-digest affinity (rendezvous hashing over available workers), given up when the
    # affine worker carries more than this many requests over the least-loaded one.
    affinity_enabled: bool = True
    affinity_max_extra_load: float = Field(default=4.0, ge=0)
    # Send each image's digest as vLLM's multimodal uuid (vLLM >= 0.11 reads it): the
    # worker skips re-hashing the pixels and its processor cache is keyed by our digest.
    worker_image_uuids: bool = True
    # Admission control: a request that needs a worker is shed at once (503 overloaded +
    # Retry-After) when every available worker of its pool has more than this many requests
    # waiting (vLLM's count, or this replica's requests to it beyond those it runs, whichever
    # is larger): overload sheds instead of queueing, and cache hits keep flowing. A
    # worker's queue then stays under about (gateway replicas x this). None disables it.
    admission_max_waiting: int | None = Field(default=32, ge=0)
    # Retry-After (seconds) on 503s: overloaded, no worker available, draining.
    retry_after_s: int = Field(default=1, ge=0)

    @field_validator("worker_urls", "worker_dns", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        return check_worker_urls(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return check_origins(value)

    @field_validator("worker_pools", mode="before")
    @classmethod
    def _pools(cls, value: object) -> object:
        return parse_pools(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.worker_pools:
            explicit_urls = "worker_urls" in self.model_fields_set and self.worker_urls
            if explicit_urls or self.worker_dns:
                raise ValueError(
                    "worker_pools replaces worker_urls and worker_dns: set one or the other"
                )
        elif not self.worker_urls and not self.worker_dns:
            raise ValueError("at least one worker URL or worker DNS name is required")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        if self.image_processor_min_pixels > self.image_processor_max_pixels:
            raise ValueError("image_processor_min_pixels must not exceed its max_pixels")
        if self.first_byte_timeout_s > self.total_timeout_s:
            raise ValueError("first_byte_timeout_s must not exceed total_timeout_s")
        return self

    def pools(self) -> tuple[PoolSpec, ...]:
        """The worker pools: GATEWAY_WORKER_POOLS, else the one pool of URLs and DNS names."""
        return self.worker_pools or (single_pool(self.worker_urls, self.worker_dns),)
