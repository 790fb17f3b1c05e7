"""Settings of the per-key rate limits, read from the environment (prefix
``GATEWAY_RATELIMIT_``). A key's own limits (api_keys columns) replace these defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RateLimitSettings(BaseSettings):
    """Everything the rate limiter can be told (env: GATEWAY_RATELIMIT_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_RATELIMIT_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Limits apply per API key; with authentication off there is no key and no limit.
    enabled: bool = True
    # None: the answer cache's Redis (GATEWAY_REDIS_URL).
    redis_url: str | None = None
    # Whether that Redis is a cluster; None: as the answer cache's (GATEWAY_REDIS_CLUSTER).
    redis_cluster: bool | None = None
    # Defaults for keys whose own columns are NULL.
    requests_per_minute: int = Field(default=600, gt=0)
    tokens_per_minute: int = Field(default=400_000, gt=0)
    max_concurrent: int = Field(default=32, gt=0)
    # Redis down or slow: True lets requests through unlimited (the default), False
    # refuses them with 503. Open by default: the limiter protects fairness between keys,
    # not correctness; every caller is still authenticated, the workers keep their own
    # admission control, and failing closed would turn a Redis outage (which the answer
    # cache already survives) into an outage of the whole API.
    fail_open: bool = True
    # While failing open, each replica enforces every key's limits in its own memory, so
    # a key gets at most (replicas x its limit) rather than no limit. False: no limit.
    local_fallback: bool = True
    # The deadline of a limit check's Redis round trip, in time the event loop was
    # responsive (gateway/loop_lag.py), as for the answer cache.
    socket_timeout_s: float = Field(default=0.25, gt=0)
    # After a Redis failure the limiter skips Redis for this long (one timeout per window).
    breaker_open_s: float = Field(default=5.0, gt=0)
    # A concurrency slot is a lease renewed by its replica every lease_ttl_s / 3; a replica
    # that dies frees its slots when their leases run out.
    lease_ttl_s: float = Field(default=30.0, ge=3)
