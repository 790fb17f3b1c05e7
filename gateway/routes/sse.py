"""The streamed answer: worker chunks forwarded as they arrive, nothing buffered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import ErrorCode, GatewayError
from gateway.routes.common import wait_for_disconnect
from gateway.streams import ChunkStream

_DONE = b"data: [DONE]\n\n"
log = logging.getLogger("gateway")
# Proxies in front (nginx) must pass events on at once, whatever their buffering default.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ProxyStreamResponse(StreamingResponse):
    """Forward an UpstreamStream as server-sent events.

    Unlike Starlette's StreamingResponse it always closes the upstream stream, also when the
    client leaves while a chunk is being sent; that close is what aborts the worker's
    request. Errors after the start become an SSE error event in the usual error shape;
    an exception that is not one of ours is a bug: logged with its trace, and reported
    (``on_error``) as our internal error, never taken for a client that left.
    """

    def __init__(
        self,
        stream: ChunkStream,
        on_error: Callable[[GatewayError], None],
        on_disconnect: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            stream, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
        )
        self._stream = stream
        self._on_error = on_error
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                pump.cancel()
                watcher.cancel()
            if not pump.done() or pump.cancelled():
                self._on_disconnect()
            elif (error := pump.exception()) is not None:
                raise error
        finally:
            self._stream.close()

    async def _pump(self, send: Send) -> None:
        try:
            async for chunk in self._stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            if isinstance(exc, GatewayError):
                error = exc
            else:
                log.exception("the stream failed after its start")
                error = GatewayError(ErrorCode.INTERNAL_ERROR, "Internal error.")
            self._on_error(error)
            body = error.sse_event() + _DONE
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
