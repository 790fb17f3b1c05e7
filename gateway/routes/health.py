"""GET /healthz (the process is alive) and GET /readyz (this replica can serve).

Readiness is the replica's own: its lifespan has opened every pool and client (Redis and
MySQL fail open, the log spools), and it is not draining. Workers do not count: an outage
of every worker is every replica's at once, so failing readiness would empty the Service,
stop cached answers and swap our 503 (with Retry-After, counted in our metrics) for a load
balancer's bare one. "No healthy worker" is a metric (gateway_worker_healthy) and an alert;
requests that need a worker get 503 no_healthy_worker. Tools that must wait for a worker
(start-up scripts, `helm test`) ask ``/readyz?min_workers=1``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from gateway.errors import ErrorCode, GatewayError, error_response
from gateway.protocol import ErrorResponse, HealthStatus, ReadyStatus
from gateway.routes.deps import ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthStatus, summary="Liveness")
async def healthz() -> HealthStatus:
    return HealthStatus()


@router.get(
    "/readyz",
    response_model=ReadyStatus,
    summary="Readiness: this replica serves (cached answers even with no worker up)",
    responses={
        503: {
            "model": ErrorResponse,
            "description": "Draining, or fewer healthy workers than min_workers.",
        }
    },
)
async def readyz(
    request: Request,
    services: ServicesDep,
    min_workers: Annotated[
        int, Query(ge=0, description="Also require this many workers to be healthy.")
    ] = 0,
) -> Response:
    retry_after_s = services.settings.retry_after_s
    if getattr(request.app.state, "draining", False):
        # SIGTERM: Nginx and Kubernetes stop sending new work while in-flight work ends.
        return error_response(
            GatewayError(
                ErrorCode.DRAINING, "The gateway is shutting down.", retry_after_s=retry_after_s
            )
        )
    healthy = services.pool.healthy_count
    if healthy < min_workers:
        return error_response(
            GatewayError(
                ErrorCode.NO_HEALTHY_WORKER,
                f"{healthy} worker(s) passed their last health check; {min_workers} asked for.",
                retry_after_s=retry_after_s,
            )
        )
    status = ReadyStatus(healthy_workers=healthy, total_workers=len(services.pool.workers))
    return JSONResponse(status.model_dump())
