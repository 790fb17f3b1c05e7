"""A worker outage on the real local stack (`make up`'s deploy/local/stack.sh): with every
worker killed, the gateways stay ready, a cached question is still answered (X-Cache: hit)
through Nginx, and a new one gets our 503 in our error shape with Retry-After.

The stack is started by stack.sh itself (its own run directory, free ports, one cpu-tiny
worker of its own, two gateways, Nginx), against this session's database and a cache
namespace of its own, and stopped by `stack.sh down`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.requests import image_chat_body
from tests.support.worker import TINY_MODEL_NAME, metric_total
from worker.profiles import REPO_ROOT
from worker.sample_image import png_data_uri

pytestmark = pytest.mark.engine

STACK_SH = REPO_ROOT / "deploy" / "local" / "stack.sh"
REPLICAS = 2


@dataclass(frozen=True)
class LocalStack:
    url: str  # Nginx
    gateway_urls: list[str]
    run_dir: Path
    api_key: str


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first: int = probe.getsockname()[1]
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def _stack_sh(command: str, env: dict[str, str], timeout_s: float) -> None:
    done = subprocess.run(
        [str(STACK_SH), command], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stack.sh {command}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def local_stack(
    log_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("stack-run")
    gateway_port = _free_ports(REPLICAS)
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "PORT": str(_free_ports(1)),
        "GATEWAY_BASE_PORT": str(gateway_port),
        "GATEWAY_REPLICAS": str(REPLICAS),
        "WORKER_PORT": str(_free_ports(1)),
        "WORKERS": "1",
        "WORKER_CPU_THREADS_BIND": "",  # float: the session's own worker runs beside it
        "NGINX_STATUS_PORT": str(_free_ports(1)),
        "GATEWAY_LOG_DATABASE_URL": log_database_url,
        "GATEWAY_CACHE_NAMESPACE": f"outage-{uuid.uuid4().hex[:10]}",
        "STARTUP_TIMEOUT": "600",
    }
    try:
        _stack_sh("up", env, timeout_s=900)
        yield LocalStack(
            url=f"http://127.0.0.1:{env['PORT']}",
            gateway_urls=[f"http://127.0.0.1:{gateway_port + i}" for i in range(REPLICAS)],
            run_dir=run_dir,
            api_key=(run_dir / "demo-api-key").read_text().strip(),
        )
    finally:
        _stack_sh("down", env, timeout_s=300)


def _question(text: str) -> dict[str, object]:
    # Greedy, so cacheable.
    return image_chat_body(
        text, png_data_uri(96, 64, seed=22), model=TINY_MODEL_NAME, max_tokens=8, temperature=0
    )


def _answer(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def _kill_every_worker(run_dir: Path) -> None:
    """SIGKILL each worker's process group (stack.sh starts each in its own, pid = pgid)."""
    pidfiles = sorted((run_dir / "pids").glob("worker-*.pid"))
    assert pidfiles, "stack.sh recorded no worker"
    for pidfile in pidfiles:
        pid = int(pidfile.read_text())
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker group {pid} still alive after SIGKILL")


async def _wait_no_healthy_worker(client: httpx.AsyncClient, gateway: str) -> None:
    """Until the gateway's health poll has seen the outage (its own metric says so)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (await client.get(f"{gateway}/metrics")).text
        if "gateway_worker_healthy{" in text and metric_total(text, "gateway_worker_healthy") == 0:
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"{gateway} still counts a healthy worker 60 s after every worker was killed")


async def test_every_worker_killed_gateways_stay_ready_and_serve_cached_answers(
    local_stack: LocalStack,
) -> None:
    headers = {"Authorization": f"Bearer {local_stack.api_key}"}
    cached = _question("Is this bag real leather? (asked before the outage)")
    async with httpx.AsyncClient(base_url=local_stack.url, timeout=120, headers=headers) as client:
        first = await client.post("/v1/chat/completions", json=cached)
        assert first.status_code == 200, first.text
        assert first.headers["x-cache"] == "miss"
        # The answer is stored once its request finished; a repeat proves it is there.
        deadline = time.monotonic() + 30
        while (await client.post("/v1/chat/completions", json=cached)).headers["x-cache"] != "hit":
            assert time.monotonic() < deadline, "the answer was never cached"
            await asyncio.sleep(0.2)

        _kill_every_worker(local_stack.run_dir)
        for gateway in local_stack.gateway_urls:
            await _wait_no_healthy_worker(client, gateway)

        # Cached: answered through Nginx, as often as asked (both replicas behind it).
        for _ in range(2 * REPLICAS):
            hit = await client.post("/v1/chat/completions", json=cached)
            assert hit.status_code == 200, hit.text
            assert hit.headers["x-cache"] == "hit"
            assert _answer(hit) == _answer(first)
        # ...and by each replica itself.
        for gateway in local_stack.gateway_urls:
            direct = await client.post(f"{gateway}/v1/chat/completions", json=cached)
            assert (direct.status_code, direct.headers["x-cache"]) == (200, "hit")

        # New: our 503, in our error shape, with Retry-After (not Nginx's, not a 502).
        new = await client.post("/v1/chat/completions", json=_question("What brand is it?"))
        assert new.status_code == 503, new.text
        error = new.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] in ("no_healthy_worker", "upstream_unavailable")
        assert int(new.headers["retry-after"]) >= 1

        # Ready all along: through Nginx and on every replica; only a caller that asks for
        # a healthy worker hears that there is none.
        assert (await client.get("/readyz")).status_code == 200
        for gateway in local_stack.gateway_urls:
            ready = await client.get(f"{gateway}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["healthy_workers"] == 0
            wanting = await client.get(f"{gateway}/readyz?min_workers=1")
            assert wanting.status_code == 503
            assert wanting.json()["error"]["code"] == "no_healthy_worker"
