"""uvicorn's httptools protocol, answering requests it cannot parse in our error shape.

A request HTTP itself forbids (a control character such as an ANSI escape in a header
value, a broken request line) is refused by the HTTP parser before the app sees it, so no
route, middleware or log row ever exists for it; uvicorn answers a plain-text 400. This
subclass writes the same 400 as the one error body, so even those callers (and Nginx in
front, which passes the answer through) get JSON they can parse.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import ErrorCode, GatewayError

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
