"""``python -m gateway``: run one gateway replica under uvicorn (uvloop + httptools).

Settings come from GATEWAY_* environment variables (see gateway/config.py); they are
validated here, before the port is bound.
"""

from __future__ import annotations

import argparse
import gc
import sys

import uvicorn
from pydantic import ValidationError

from gateway.app import create_app
from gateway.config import Settings
from gateway.server import DrainingServer, JsonErrorHttpToolsProtocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests (streams included) finish on SIGTERM",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds between SIGTERM (readiness fails at once) and the stop of accepting",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log", action="store_true", help="uvicorn access log (Nginx keeps one)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid gateway settings:\n{exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    # Everything imported so far lives as long as the process: move it out of the
    # collector's reach so full collections (which pause the event loop, and with it every
    # stream) only scan what requests allocate.
    gc.collect()
    gc.freeze()
    app.state.draining = False
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        # Nginx's X-Real-IP is read by the interaction log, from trusted peers only
        # (GATEWAY_LOG_TRUSTED_PROXIES); uvicorn's own proxy-header layer would rewrite the
        # peer first, and costs a middleware layer per request.
        proxy_headers=False,
        http=JsonErrorHttpToolsProtocol,  # httptools; unparseable requests get our 400
        ws="none",
        lifespan="on",
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
        # Longer than Nginx's upstream keepalive_timeout, so Nginx closes idle links first.
        timeout_keep_alive=75,
        server_header=False,
    )
    DrainingServer(config, app, args.drain_delay).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
