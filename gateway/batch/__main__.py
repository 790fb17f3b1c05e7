"""``python -m gateway.batch``: the batch runner, a process of its own.

It reads the same GATEWAY_* settings as the gateway (the database, GATEWAY_BATCH_*), sends
lines to GATEWAY_BATCH_GATEWAY_URL with GATEWAY_BATCH_RUNNER_TOKEN, and serves its metrics
on GATEWAY_BATCH_METRICS_HOST:GATEWAY_BATCH_METRICS_PORT. SIGTERM: it stops claiming and
finishes the lines in flight; SIGKILL loses nothing (their leases lapse, another runner or
the next start takes them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import uuid

import httpx
from prometheus_client import start_http_server
from pydantic import ValidationError

from gateway.batch.feeder import Capacity, LineSender
from gateway.batch.metrics import RunnerMetrics
from gateway.batch.queue import LineQueue
from gateway.batch.runner import Runner
from gateway.config import Settings
from gateway.db.engine import create_log_engine

log = logging.getLogger("gateway.batch")


async def _serve(settings: Settings, metrics: RunnerMetrics) -> None:
    batch = settings.batch
    url = (batch.database_url or settings.log.database_url).get_secret_value()
    engine = create_log_engine(
        url, connect_timeout_s=batch.connect_timeout_s, pool_size=4, prepared_statements=True
    )
    runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    limits = httpx.Limits(max_connections=batch.concurrency + 2)
    try:
        async with httpx.AsyncClient(limits=limits) as client:
            runner = Runner(
                batch,
                LineQueue(engine, runner_id),
                LineSender(client, batch),
                Capacity(client, batch),
                metrics,
            )
            log.info("batch runner %s feeding %s", runner_id, batch.gateway_url)
            await runner.run(stop)
    finally:
        await engine.dispose()
    log.info("batch runner %s stopped", runner_id)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    batch = settings.batch
    if not batch.enabled or batch.runner_token is None:
        print("the batch runner needs GATEWAY_BATCH_RUNNER_TOKEN (and batches on)", file=sys.stderr)
        return 2
    metrics = RunnerMetrics()
    start_http_server(batch.metrics_port, batch.metrics_host, registry=metrics.registry)
    asyncio.run(_serve(settings, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
