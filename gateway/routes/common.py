"""Helpers shared by the handlers: reading the body, client disconnects, documented errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from fastapi import Request
from starlette.types import Receive

from gateway.protocol import ErrorResponse
from gateway.validation.parse import check_content_type, parse_json_object

T = TypeVar("T")

# HTTP status for "the client closed the connection first" (nginx's convention); only
# ever seen in our metrics, since nobody is left to receive it.
CLIENT_CLOSED_REQUEST: Final = 499

_ERROR_DESCRIPTIONS: Final = {
    400: "Invalid request (see error.code).",
    401: "Missing, invalid or revoked API key (send 'Authorization: Bearer <key>').",
    403: "The API key may not use the requested model.",
    404: "Unknown model.",
    408: "The request body did not arrive in time.",
    413: "Request body too large.",
    415: "Content-Type is not application/json.",
    429: "Over one of the API key's limits; see Retry-After and x-ratelimit-* headers.",
    502: "The worker failed or sent a malformed answer.",
    503: "No worker could be reached.",
    504: "The worker did not answer in time.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error responses a route can return."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


async def read_json(request: Request) -> dict[str, Any]:
    check_content_type(request.headers.get("content-type"))
    return await parse_json_object(await request.body())


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work`` unless the client goes away first; then cancel it and return None.

    Cancelling the work closes its upstream connection, which makes the worker abort the
    generation instead of finishing an answer nobody will read. Call only after the body
    has been read: from then on the next ASGI message is the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    # Let the cancellation unwind (upstream connection closed) before returning.
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves (shutdown): do not swallow it
    except Exception:  # the work failed while being cancelled: nobody is left to tell
        pass
    return None
