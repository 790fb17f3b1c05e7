"""``python -m gateway``: run one gateway replica under uvicorn (uvloop + httptools).

Settings come from GATEWAY_* environment variables (see gateway/config.py); they are
validated here, before the port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from gateway.app import create_app
from gateway.config import Settings
from gateway.http_protocol import JsonErrorHttpToolsProtocol

log = logging.getLogger("gateway")


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
