"""What handlers get injected: the services the lifespan built, and the request context."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request

from gateway.admission import admission_of
from gateway.cache.store import CacheDirectives
from gateway.config import Settings
from gateway.interactions.draft import InteractionDraft, draft_of
from gateway.metrics import Metrics
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
    # Parses very large bodies in a process of its own (validation/offload.py).
    parser: BodyParser | None = None


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a thread
# pool, a thread hop per request for what is an attribute lookup.
async def get_services(request: Request) -> Services:
    return cast(Services, request.state.services)


async def get_context(request: Request) -> RequestContext:
    state = request.state
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return RequestContext(
        request_id=str(getattr(state, "request_id", "")),
        route=str(route),
        started=float(getattr(state, "started", time.perf_counter())),
        directives=CacheDirectives.from_header(request.headers.get("cache-control")),
        # Outside the logged routes (or with the log off) the draft is simply dropped.
        draft=draft_of(state) or InteractionDraft(),
        admission=admission_of(state),
    )


ServicesDep = Annotated[Services, Depends(get_services)]
ContextDep = Annotated[RequestContext, Depends(get_context)]
