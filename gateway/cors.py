"""CORS for browser apps, off unless GATEWAY_CORS_ORIGINS lists origins.

Our stance: call the API from your backend. An API key shipped in a browser (or mobile)
app is anyone's key. Those who still want a browser to call us (an internal tool, a demo
behind its own login) list its origins; any other origin gets no CORS headers, so the
browser refuses to show it the answer. Starlette's middleware does the work; a refused
preflight gets our error shape instead of its plain text.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from gateway.errors import ErrorCode, GatewayError, error_response

# What a browser app may read of our answers (it sees only simple headers otherwise).
EXPOSED_HEADERS: Final = (
    "x-request-id",
    "x-request-id-replaced",
    "x-cache",
    "retry-after",
    "x-should-retry",
    *(
        f"x-ratelimit-{name}-{kind}"
        for kind in ("requests", "tokens")
        for name in ("limit", "remaining", "reset")
    ),
)


class Cors(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = GatewayError(
            ErrorCode.INVALID_REQUEST,
            "CORS preflight refused: this origin, method or header is not allowed here. "
            "Call the API from your backend.",
        )
        # Its CORS headers (Vary, Allow-Methods...), not its plain text's length and type.
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        return error_response(refused, kept)


def cors_middleware(origins: tuple[str, ...]) -> list[Middleware]:
    """The middleware for ``origins`` (none when empty: no CORS headers at all)."""
    if not origins:
        return []
    return [
        Middleware(
            Cors,
            allow_origins=origins,
            allow_methods=("GET", "POST", "DELETE"),
            # Any request header: SDKs add their own (the openai JS SDK's x-stainless-*).
            allow_headers=("*",),
            # Keys travel in Authorization, never in cookies: no credentials mode.
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    ]
