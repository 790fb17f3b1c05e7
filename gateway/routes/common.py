"""Shared by the handlers: headers, the body, client disconnects, documented errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from starlette.types import Receive

from gateway.errors import ERROR_TABLE
from gateway.protocol import ErrorResponse

T = TypeVar("T")

# HTTP status for "the client closed the connection first" (nginx's convention); only
# ever seen in our metrics, since nobody is left to receive it.
CLIENT_CLOSED_REQUEST: Final = 499

_ERROR_DESCRIPTIONS: Final[dict[int | str, str]] = {
    400: "Invalid request (see error.code).",
    401: "Missing, invalid or revoked API key (send 'Authorization: Bearer <key>').",
    403: "The API key may not use the requested model.",
    404: "Unknown model, or a path without /v1.",
    408: "The request body did not arrive in time.",
    409: "The Idempotency-Key was already used with a different body.",
    413: "Request body too large.",
    415: "Content-Type is not application/json.",
    429: "Over one of the API key's limits; see Retry-After, x-should-retry and the "
    "x-ratelimit-* headers.",
    500: "A fault of ours (internal_error); report the x-request-id.",
    502: "The worker failed or sent a malformed answer.",
    503: "No worker could be reached, or a dependency is down; see Retry-After.",
    504: "The worker did not answer in time.",
    "4XX": "The worker refused the request with its own status (upstream_rejected).",
}
# What an inference route can answer: every status of the error table (405 is a wrong
# method on its path, not an answer of its POST), and the worker's own 4xx.
INFERENCE_ERROR_STATUSES: Final[tuple[int | str, ...]] = (
    *sorted({kind.status for kind in ERROR_TABLE.values()} - {405}),
    "4XX",
)


def _description(status: int | str) -> str:
    # A status the error table gained without words here still gets documented.
    return _ERROR_DESCRIPTIONS.get(status, "See error.code and docs/ERRORS.md.")


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """FastAPI's declarations of the error responses a route can return."""
    return {
        status: {"model": ErrorResponse, "description": _description(status)} for status in statuses
    }


def error_operations(*statuses: int | str) -> dict[str, dict[str, Any]]:
    """The same declarations as OpenAPI response objects, for routes FastAPI does not see."""
    schema = {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}
    return {
        str(status): {
            "description": _description(status),
            "content": {"application/json": {"schema": schema}},
        }
        for status in statuses
    }


class ClientGone(Exception):
    """The client disconnected before its body had arrived."""


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the body limit middleware bounds it while it arrives)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T | None:
    """Run ``work`` unless the client goes away first; then cancel it and return None.

    Cancelling the work closes its upstream connection, which makes the worker abort the
    generation instead of finishing an answer nobody will read. Call only after the body
    has been read: from then on the next ASGI message is the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    # A callback rather than asyncio.wait: no future and no task step per request for it.
    watcher.add_done_callback(lambda _: task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves (shutdown): do not swallow it
        if not watcher.done() or watcher.cancelled():
            raise  # the work cancelled itself: not a disconnect
        return None
    except Exception:
        if watcher.done() and not watcher.cancelled():
            return None  # the work failed while being cancelled: nobody is left to tell
        raise
    finally:
        watcher.cancel()
