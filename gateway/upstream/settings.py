"""Named worker pools with weights (canary rollouts), as GATEWAY_WORKER_POOLS reads them.

``GATEWAY_WORKER_POOLS='[{"name": "stable", "weight": 95, "dns": ["http://w-stable:8000"]},
{"name": "canary", "weight": 5, "urls": ["http://10.0.0.9:8000"]}]'`` (JSON). Each pool is
found by its own URL list and/or DNS names. Without it, GATEWAY_WORKER_URLS and
GATEWAY_WORKER_DNS are one pool named "default".

A pool's ``engine`` is "vllm" (vLLM's OpenAI server, the default) or "triton" (Triton
Inference Server with a vLLM model behind the official backend's interface, spoken in
KServe v2: gateway/upstream/kserve/); a Triton pool says more in its ``triton`` block.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal
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


class TritonPool(BaseModel):
    """How to speak to a pool of Triton workers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The model name clients ask for (what a vLLM worker calls --served-model-name).
    served_model: str = Field(min_length=1)
    # The checkpoint's chat template: a chat_template.jinja, a tokenizer_config.json or
    # the checkpoint's folder holding either. The gateway renders prompts with it.
    chat_template: str = Field(min_length=1)
    # Triton's model name (the official backend's samples call it vllm_model).
    model: str = Field(default="vllm_model", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    # The checkpoint, as the cache key sees it: answers are shared with vLLM pools only
    # when share_cache is set and this equals what their workers report as `root`.
    checkpoint: str | None = None
    share_cache: bool = False
    # Triton serves its metrics on a port of its own: the worker's port plus this offset
    # (Triton's defaults are 8000 and 8002).
    metrics_port_offset: int = Field(default=2, ge=-65535, le=65535)
    max_model_len: int | None = Field(default=None, gt=0)

    @property
    def cache_root(self) -> str:
        """The checkpoint part of the cache key for this pool's answers."""
        checkpoint = self.checkpoint or self.served_model
        return checkpoint if self.share_cache else f"triton:{checkpoint}"


class PoolSpec(BaseModel):
    """One pool: its name (a label on metrics and log rows), its share of requests relative
    to the other pools, and where its workers are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PoolName
    weight: int = Field(default=1, gt=0, le=10_000)
    urls: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    engine: Literal["vllm", "triton"] = "vllm"
    triton: TritonPool | None = None

    @field_validator("urls", "dns", mode="before")
    @classmethod
    def _urls(cls, value: object) -> object:
        return check_worker_urls(value)

    @model_validator(mode="after")
    def _somewhere(self) -> PoolSpec:
        if not self.urls and not self.dns:
            raise ValueError(f"pool {self.name!r} needs urls or dns")
        if (self.engine == "triton") != (self.triton is not None):
            raise ValueError(f"pool {self.name!r}: a 'triton' block goes with engine 'triton'")
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
