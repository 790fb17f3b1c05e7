"""The HTTP server of one replica: uvicorn with drain on SIGTERM, and JSON 400s from its parser.

DrainingServer: readiness fails at the first signal, then uvicorn's graceful shutdown.
JsonErrorHttpToolsProtocol: uvicorn's httptools protocol, answering requests it cannot
parse in our error shape.

A request HTTP itself forbids (a control character such as an ANSI escape in a header
value, a broken request line) is refused by the HTTP parser before the app sees it, so no
route, middleware or log row ever exists for it; uvicorn answers a plain-text 400. This
subclass writes the same 400 as the one error body, so even those callers (and Nginx in
front, which passes the answer through) get JSON they can parse.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType
from typing import Final

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import ErrorCode, GatewayError

log = logging.getLogger("gateway")

_BODY: Final = GatewayError(ErrorCode.INVALID_REQUEST, "Malformed HTTP request.").body()


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # msg is uvicorn's own text, already logged by uvicorn; the caller gets ours.
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + _BODY)
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """Uvicorn, plus readiness that fails the moment SIGTERM (or SIGINT) arrives.

    ``app.state.draining`` turns /readyz into a 503 at once; after ``drain_delay_s`` (time
    for Nginx or Kubernetes to notice) uvicorn's own shutdown starts: it stops accepting,
    lets in-flight requests and streams finish up to its graceful timeout, then runs the
    lifespan's shutdown, which flushes the interaction log.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_delay_s = drain_delay_s

    def _stop(self, sig: int) -> None:
        super().handle_exit(sig, None)
        self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not getattr(self._app.state, "draining", False)
        self._app.state.draining = True
        if first and self._drain_delay_s > 0 and not self.should_exit:
            log.warning("signal %d: draining; stopping in %.1f s", sig, self._drain_delay_s)
            asyncio.get_running_loop().call_later(self._drain_delay_s, self._stop, sig)
            return
        log.warning("signal %d: draining", sig)
        super().handle_exit(sig, frame)
        # Uvicorn re-raises captured signals after its graceful shutdown, which would end
        # the process with status 143; a completed drain is a clean exit (status 0).
        self._captured_signals.clear()
