"""Worker discovery through DNS: the pool follows a name's answers (a Kubernetes headless
service has one address per ready worker), and a gateway finds its workers by a real name."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.upstream.pool import WorkerPool
from tests.doubles.fake_worker import FakeWorker
from tests.support.requests import chat_body
from tests.support.servers import gateway_settings, run_gateway, serve


class ScriptedDns:
    """Answers for one name, changed by the test; an OSError answer is a failed lookup."""

    def __init__(self) -> None:
        self.answer: list[str] | OSError = []
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def _healthy(pool: WorkerPool) -> list[str]:
    return [w.url for w in pool.workers if w.available]


async def test_pool_follows_the_names_answers() -> None:
    first, second = FakeWorker(), FakeWorker()
    async with serve(first.app(), "127.0.0.1") as a:
        port = int(a.rsplit(":", 1)[1])
        # The second worker listens on another loopback address, same port: as pods do.
        async with serve(second.app(), "127.0.0.2", port) as b:
            dns = ScriptedDns()
            settings = gateway_settings(worker_dns=(f"http://workers.test:{port}",))
            metrics = Metrics()
            async with aiohttp.ClientSession() as session:
                pool = WorkerPool(session, settings, metrics, resolve=dns)
                dns.answer = ["127.0.0.1"]
                await pool.poll_once()
                assert _healthy(pool) == [a]
                assert dns.lookups == [("workers.test", port)]

                dns.answer = ["127.0.0.2", "127.0.0.1"]  # scaled up
                await pool.discover()
                assert [w.url for w in pool.workers] == [a, b]
                assert not pool.workers[1].available  # no traffic before its health check
                await pool.poll_once()
                assert _healthy(pool) == [a, b]
                assert {pool.choose().url for _ in range(4)} == {a, b}

                dns.answer = OSError("temporary failure in name resolution")
                await pool.discover()
                assert _healthy(pool) == [a, b]  # a DNS blip keeps the last answer
                dns.answer = []
                await pool.discover()
                assert _healthy(pool) == [a, b]

                dns.answer = ["127.0.0.2"]  # the first pod went away
                await pool.discover()
                assert [w.url for w in pool.workers] == [b]
                assert {pool.choose().url for _ in range(4)} == {b}
                exported = metrics.registry.get_sample_value(
                    "gateway_worker_healthy", {"worker": a}
                )
                assert exported is None  # no stale series for a worker that left


async def test_static_workers_stay_beside_discovered_ones() -> None:
    dns = ScriptedDns()
    dns.answer = ["10.0.0.7"]
    settings = gateway_settings(
        "http://static:8100", worker_dns=("http://workers.test:8000", "https://more.test")
    )
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(session, settings, Metrics(), resolve=dns)
        await pool.discover()
    # Each name keeps its own scheme and port (https without a port: 443).
    assert [w.url for w in pool.workers] == [
        "http://static:8100",
        "http://10.0.0.7:8000",
        "https://10.0.0.7:443",
    ]
    dns.answer = ["fd00::7"]
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(session, settings, Metrics(), resolve=dns)
        await pool.discover()
    assert "http://[fd00::7]:8000" in [w.url for w in pool.workers]


async def test_gateway_finds_its_worker_through_real_dns(http: httpx.AsyncClient) -> None:
    worker = FakeWorker()
    async with serve(worker.app()) as a:
        port = int(a.rsplit(":", 1)[1])
        async with run_gateway(worker_dns=(f"http://localhost:{port}",)) as gateway:
            assert (await http.get(f"{gateway}/readyz")).status_code == 200
            response = await http.post(f"{gateway}/v1/chat/completions", json=chat_body())
            assert response.status_code == 200
    assert len(worker.requests) == 1


def test_a_pool_needs_urls_or_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="worker URL or worker DNS name"):
        Settings(worker_urls=())
    monkeypatch.setenv("GATEWAY_WORKER_URLS", "")
    monkeypatch.setenv("GATEWAY_WORKER_DNS", "http://a.test:8000, http://b.test:8000")
    assert Settings().worker_dns == ("http://a.test:8000", "http://b.test:8000")
    monkeypatch.setenv("GATEWAY_WORKER_DNS", "workers.test:8000")
    with pytest.raises(ValueError, match="must be http"):
        Settings()
