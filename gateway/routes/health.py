"""GET /healthz (the process is alive) and GET /readyz (a worker is healthy)."""

from __future__ import annotations

from fastapi import APIRouter, Request
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
    summary="Readiness: at least one worker passed its last health check",
    responses={503: {"model": ErrorResponse, "description": "No healthy worker."}},
)
async def readyz(request: Request, services: ServicesDep) -> Response:
    if getattr(request.app.state, "draining", False):
        # SIGTERM: Nginx and Kubernetes stop sending new work while in-flight work ends.
        return error_response(
            GatewayError(
                ErrorCode.DRAINING,
                "The gateway is shutting down.",
                retry_after_s=services.settings.retry_after_s,
            )
        )
    healthy = services.pool.healthy_count
    if healthy == 0:
        return error_response(
            GatewayError(ErrorCode.NO_HEALTHY_WORKER, "No worker passed its last health check.")
        )
    status = ReadyStatus(healthy_workers=healthy, total_workers=len(services.pool.workers))
    return JSONResponse(status.model_dump())
