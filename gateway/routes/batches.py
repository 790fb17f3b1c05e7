"""OpenAI's Batch API: POST/GET /v1/files, GET /v1/files/{id}/content, POST/GET /v1/batches,
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. The work itself is the runner's
(python -m gateway.batch); these handlers only store and show. A key sees only its own
files and batches: every query names the owner, and another key's id is a 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.admission import admission_of
from gateway.batch.objects import COMPLETION_WINDOWS, ENDPOINTS, batch_object, file_object
from gateway.batch.store import BatchStore
from gateway.batch.upload import PURPOSE_BATCH, check_input_file, parse_upload
from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ErrorResponse
from gateway.routes.common import error_responses
from gateway.routes.deps import Services, ServicesDep
from gateway.validation.parse import check_content_type

router = APIRouter(tags=["batches"])
T = TypeVar("T")

_UNAVAILABLE: Final[dict[int | str, dict[str, Any]]] = {
    503: {"model": ErrorResponse, "description": "The batch store cannot be reached."}
}
_ERRORS: Final = {**error_responses(400, 401, 404, 429), **_UNAVAILABLE}
_LIMIT_DEFAULT, _LIMIT_MAX = 20, 100

MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class BatchCreateRequest(BaseModel):
    """POST /v1/batches (OpenAI's fields; ``output_expires_after`` is accepted, and files
    are kept until deleted from the database)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(json_schema_extra={"enum": list(ENDPOINTS)})
    completion_window: str = Field(json_schema_extra={"enum": list(COMPLETION_WINDOWS)})
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None


def _store(services: Services) -> BatchStore:
    store = services.batches
    if store is None:
        raise GatewayError(ErrorCode.NOT_FOUND, "Batches are not enabled on this gateway.")
    return store


def _owner(request: Request) -> str:
    """The caller's key id ("" when keys are off): the owner of what it creates."""
    admission = admission_of(request.scope.get("state", {}))
    key = admission.key if admission is not None else None
    return key.key_id if key is not None else ""


async def _db(call: Awaitable[T]) -> T:
    try:
        return await call
    except (DBAPIError, OSError, TimeoutError):
        raise GatewayError(
            ErrorCode.BATCH_STORE_UNAVAILABLE, "The batch store cannot be reached; try again."
        ) from None


def _not_found(kind: str) -> GatewayError:
    return GatewayError(ErrorCode.NOT_FOUND, f"No such {kind}.")


_FILE_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "purpose": {"type": "string", "enum": [PURPOSE_BATCH]},
                        "file": {"type": "string", "format": "binary"},
                    },
                    "required": ["purpose", "file"],
                }
            }
        },
    }
}


@router.post(
    "/v1/files",
    summary="Upload a batch input file (JSON lines)",
    responses={
        200: {"description": "The file object."},
        **_ERRORS,
        **error_responses(413, 415),
    },
    openapi_extra=_FILE_BODY,
)
async def create_file(request: Request, services: ServicesDep) -> Response:
    store = _store(services)
    body = await request.body()
    max_lines = services.settings.batch.max_lines

    def parse() -> Any:
        upload = parse_upload(request.headers.get("content-type"), body)
        check_input_file(upload.data, max_lines)
        return upload

    upload = await asyncio.to_thread(parse)
    row = await _db(
        store.create_file(_owner(request), upload.purpose, upload.filename, upload.data)
    )
    return JSONResponse(file_object(row))


@router.get("/v1/files/{file_id}", summary="A file's object", responses=_ERRORS)
async def get_file(file_id: str, request: Request, services: ServicesDep) -> Response:
    row = await _db(_store(services).file(_owner(request), file_id))
    if row is None:
        raise _not_found("file")
    return JSONResponse(file_object(row))


@router.get(
    "/v1/files/{file_id}/content",
    summary="A file's bytes (input, output or error file)",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {}}}, **_ERRORS},
)
async def file_content(file_id: str, request: Request, services: ServicesDep) -> Response:
    store = _store(services)
    row = await _db(store.file(_owner(request), file_id))
    if row is None:
        raise _not_found("file")

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in store.content(file_id):
            yield chunk

    headers = {"content-length": str(row["bytes"])}
    return StreamingResponse(chunks(), media_type="application/jsonl", headers=headers)


@router.post(
    "/v1/batches",
    summary="Create a batch from an uploaded file",
    responses={200: {"description": "The batch object."}, **_ERRORS, **error_responses(413, 415)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BatchCreateRequest.model_json_schema()}},
        }
    },
)
async def create_batch(request: Request, services: ServicesDep) -> Response:
    store = _store(services)
    check_content_type(request.headers.get("content-type"))
    create = await services.parser.parse_model(await request.body(), BatchCreateRequest)
    if create.endpoint not in ENDPOINTS:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            f"'endpoint' must be one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
        )
    if create.completion_window not in COMPLETION_WINDOWS:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            "'completion_window' must be '24h'.",
            param="completion_window",
        )
    owner = _owner(request)
    source = await _db(store.file(owner, create.input_file_id))
    if source is None or source["purpose"] != PURPOSE_BATCH:
        raise GatewayError(ErrorCode.NOT_FOUND, "No such batch input file.", param="input_file_id")
    row = await _db(
        store.create_batch(
            owner, create.input_file_id, create.endpoint, create.completion_window, create.metadata
        )
    )
    services.metrics.batches_created.inc()
    return JSONResponse(batch_object(row))


@router.get("/v1/batches/{batch_id}", summary="A batch's object", responses=_ERRORS)
async def get_batch(batch_id: str, request: Request, services: ServicesDep) -> Response:
    row = await _db(_store(services).batch(_owner(request), batch_id))
    if row is None:
        raise _not_found("batch")
    return JSONResponse(batch_object(row))


def _limit(raw: str | None) -> int:
    if raw is None:
        return _LIMIT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= _LIMIT_MAX:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"'limit' must be 1 to {_LIMIT_MAX}.", param="limit"
        )
    return int(raw)


@router.get(
    "/v1/batches",
    summary="The caller's batches, newest first",
    responses=_ERRORS,
    openapi_extra={
        "parameters": [
            {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": _LIMIT_MAX},
            },
        ]
    },
)
async def list_batches(request: Request, services: ServicesDep) -> Response:
    limit = _limit(request.query_params.get("limit"))
    after = request.query_params.get("after")
    rows, more = await _db(_store(services).batches(_owner(request), after, limit))
    data = [batch_object(row) for row in rows]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch", responses=_ERRORS)
async def cancel_batch(batch_id: str, request: Request, services: ServicesDep) -> Response:
    row = await _db(_store(services).cancel(_owner(request), batch_id))
    if row is None:
        raise _not_found("batch")
    return JSONResponse(batch_object(row))
