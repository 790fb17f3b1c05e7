"""GET /v1/models: the models the workers serve."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from gateway.errors import ErrorCode, GatewayError, error_response
from gateway.protocol import ErrorResponse, ModelCard, ModelList
from gateway.routes.common import error_responses
from gateway.routes.deps import ServicesDep

router = APIRouter(tags=["inference"])


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="Models served by the workers",
    responses={
        **error_responses(401, 429),
        503: {"model": ErrorResponse, "description": "No worker has listed its models."},
    },
)
async def list_models(services: ServicesDep) -> Response:
    cards = services.pool.model_cards()
    if not cards:
        return error_response(
            GatewayError(ErrorCode.NO_HEALTHY_WORKER, "No worker has reported its models yet.")
        )
    listing = ModelList(data=[ModelCard.model_validate(card) for card in cards])
    return JSONResponse(listing.model_dump())
