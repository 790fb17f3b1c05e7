"""Named worker pools with weights (canary rollouts), as GATEWAY_WORKER_POOLS reads them.

``GATEWAY_WORKER_POOLS='[{"name": "stable", "weight": 95, "dns": ["http://w-stable:8000"]},
{"name": "canary", "weight": 5, "urls": ["http://10.0.0.9:8000"]}]'`` (JSON). Each pool is
found by its own URL list and/or DNS names. Without it, GATEWAY_WORKER_URLS and
GATEWAY_WORKER_DNS are one pool named "default".
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.metrics import DEFAULT_POOL

PoolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]


def check_worker_urls(value: object) -> object:
    """A comma-separated string or a list -> a tuple of http(s)://host[:port], no slash."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        urls = tuple(str(part).strip().rstrip("/") for part in value if str(part).strip())
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"worker URL {url!r} must be http(s)://host[:port]")
        return urls
    return value


class PoolSpec(BaseModel):
    """One pool: its name (a label on metrics and log rows), its share of requests relative
    to the other pools, and where its workers are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PoolName
    weight: int = Field(default=1, gt=0, le=10_000)
    urls: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    @field_validator("urls", "dns", mode="before")
    @classmethod
    def _urls(cls, value: object) -> object:
        return check_worker_urls(value)

    @model_validator(mode="after")
    def _somewhere(self) -> PoolSpec:
        if not self.urls and not self.dns:
            raise ValueError(f"pool {self.name!r} needs urls or dns")
        return self


def parse_pools(value: object) -> object:
    """GATEWAY_WORKER_POOLS: a JSON list of pools, names unique ("" = not set)."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"worker_pools is not JSON: {exc.msg}") from None
    if isinstance(value, list | tuple):
        pools = tuple(p if isinstance(p, PoolSpec) else PoolSpec.model_validate(p) for p in value)
        names = [p.name for p in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"worker pool names must be unique: {names}")
        return pools
    return value


def single_pool(urls: tuple[str, ...], dns: tuple[str, ...]) -> PoolSpec:
    """GATEWAY_WORKER_URLS + GATEWAY_WORKER_DNS as the one pool they have always been."""
    return PoolSpec.model_construct(name=DEFAULT_POOL, weight=1, urls=urls, dns=dns)
