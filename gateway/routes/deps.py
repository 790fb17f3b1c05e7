"""What handlers get: the services the lifespan built, and the request context."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from starlette.types import Scope

from gateway.admission import admission_of
from gateway.batch.lane import batch_line_of
from gateway.batch.store import BatchStore
from gateway.cache.idempotency import HEADER as IDEMPOTENCY_KEY
from gateway.cache.idempotency import read_idempotency_key
from gateway.cache.store import CacheDirectives
from gateway.config import Settings
from gateway.interactions.draft import InteractionDraft, draft_of
from gateway.matching.stage import Matcher
from gateway.metrics import Metrics
from gateway.middleware import request_header
from gateway.pipeline import Pipeline, RequestContext
from gateway.upstream.pool import WorkerPool
from gateway.validation.offload import BodyParser


@dataclass(frozen=True, slots=True)
class Services:
    """Built once by the app's lifespan and handed to every request through its state."""

    settings: Settings
    metrics: Metrics
    pool: WorkerPool
    pipeline: Pipeline
    # Every endpoint's body parser: bodies of many values in a process of its own
    # (validation/offload.py).
    parser: BodyParser
    # Files and batches (gateway/batch/; None when off) and image-text matching.
    batches: BatchStore | None = None
    matcher: Matcher | None = None


def services_of(scope: Scope) -> Services:
    return cast(Services, scope["state"]["services"])


def context_of(scope: Scope, idempotent: bool = False) -> RequestContext:
    """``idempotent``: the route honours Idempotency-Key (its value is checked: 400)."""
    state = scope.get("state", {})
    route = getattr(scope.get("route"), "path", None) or scope["path"]
    return RequestContext(
        request_id=str(state.get("request_id", "")),
        route=str(route),
        started=float(state.get("started", time.perf_counter())),
        directives=CacheDirectives.from_header(request_header(scope, b"cache-control")),
        # Outside the logged routes (or with the log off) the draft is simply dropped.
        draft=draft_of(state) or InteractionDraft(),
        admission=admission_of(state),
        priority=line.priority if (line := batch_line_of(state)) is not None else None,
        idempotency_key=(
            read_idempotency_key(request_header(scope, IDEMPOTENCY_KEY)) if idempotent else None
        ),
    )


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a thread
# pool, a thread hop per request for what is an attribute lookup.
async def get_services(request: Request) -> Services:
    return services_of(request.scope)


ServicesDep = Annotated[Services, Depends(get_services)]
