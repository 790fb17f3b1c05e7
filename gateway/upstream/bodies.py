"""Reading a worker's response body up to a limit.

``StreamReader.read(n)`` returns what is buffered, not n bytes: a body that spans TCP
segments would be cut at the first one (a worker's load read as 0 waiting, an error
message lost). Read until the end or the limit instead.
"""

from __future__ import annotations

import aiohttp


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
