"""Gateways from several code trees in one benchmark run (A/B), optionally with their event
loop held on purpose.

``BENCH_TREES=before=/tmp/main,after=.`` names the trees (copies of the repository, e.g.
``git archive`` of two commits); without it, this repository alone. A gateway runs from its
tree's own ``gateway/`` (the tree is its working directory, so it comes first on
sys.path), with this repository's virtual environment.

``loop_stall=(stall_s, every_s)`` holds the replica's event loop for ``stall_s`` every
``every_s`` (a task in its lifespan that sleeps without yielding), as a burst of CPU work
(large bodies, the log writer catching up) holds it in production. It wraps the app from
outside, so any tree can be loaded the same way.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localstack.processes import GATEWAY_PYTHON, LocalProcess, free_port, wait_http_ok
from worker.profiles import REPO_ROOT

# `python -c` program: python -m gateway, with the loop held on purpose (BENCH_LOOP_STALL).
_STALLED_GATEWAY = """
import asyncio, contextlib, os, sys, time
import gateway.__main__ as entry
stall_s, every_s = (float(x) for x in os.environ["BENCH_LOOP_STALL"].split("/"))
plain_create_app = entry.create_app

def create_app(settings=None):
    app = plain_create_app(settings)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async def hold_the_loop():
            while True:
                await asyncio.sleep(every_s)
                time.sleep(stall_s)
        task = asyncio.create_task(hold_the_loop())
        try:
            async with inner(a) as state:
                yield state
        finally:
            task.cancel()

    app.router.lifespan_context = lifespan
    return app

entry.create_app = create_app
sys.exit(entry.main(sys.argv[1:]))
"""


def trees() -> dict[str, Path]:
    spec = os.environ.get("BENCH_TREES", "")
    if not spec:
        return {"": REPO_ROOT}
    return {name: Path(path) for name, path in (part.split("=", 1) for part in spec.split(","))}


def start_gateway_in(
    tree: Path,
    worker_urls: list[str],
    run_dir: Path,
    env: dict[str, str],
    loop_stall: tuple[float, float] | None = None,
) -> LocalProcess:
    """A gateway from ``tree`` on a free port, returned once /readyz answers."""
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "GATEWAY_WORKER_URLS": ",".join(worker_urls),
        "GATEWAY_LOG_SPOOL_PATH": str(run_dir.resolve() / f"spool-{port}.jsonl"),
        **env,
    }
    program = ["-m", "gateway"]
    if loop_stall is not None:
        full_env["BENCH_LOOP_STALL"] = f"{loop_stall[0]}/{loop_stall[1]}"
        program = ["-c", _STALLED_GATEWAY]
    cmd = [str(GATEWAY_PYTHON), *program, "--host", "127.0.0.1", "--port", str(port)]
    log_path = run_dir / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, cwd=tree, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    gateway = LocalProcess(f"gateway-{port}", process, port, log_path)
    wait_http_ok(gateway, "/readyz", 90)
    return gateway
