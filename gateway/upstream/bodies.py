"""Reading a worker's response body up to a limit, and its error message.

``StreamReader.read(n)`` returns what is buffered, not n bytes: a body that spans TCP
segments would be cut at the first one (a worker's load read as 0 waiting, an error
message lost). Read until the end or the limit instead.
"""

from __future__ import annotations

import json

import aiohttp

# Upper bound on a worker's error body we read and on the message we pass on.
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_MESSAGE_LIMIT = 1000


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, whole up to ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def read_worker_error(response: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    """The message and param of a worker's error body (vLLM's shapes, old and new)."""
    try:
        raw = await read_limited(response, _ERROR_BODY_LIMIT)
        payload = json.loads(raw)
    except (aiohttp.ClientError, ValueError):
        return None, None
    if not isinstance(payload, dict):
        return None, None
    detail = payload.get("error", payload)
    if not isinstance(detail, dict):
        return (str(detail)[:_ERROR_MESSAGE_LIMIT], None)
    message = detail.get("message")
    param = detail.get("param")
    return (
        str(message)[:_ERROR_MESSAGE_LIMIT] if message is not None else None,
        str(param) if isinstance(param, str) else None,
    )
