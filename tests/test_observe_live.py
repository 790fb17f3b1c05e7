"""Live: Prometheus (Debian's) scrapes a running stack with the shipped rules; every
dashboard panel's query returns data; a SIGKILLed worker's alert reaches Alertmanager
and its webhook.

Everything here is this test's own: a second cpu-tiny worker (the one it kills), a
gateway process, Nginx with stub_status on a port of its own, a private Redis and
MariaDB, the three exporters, Prometheus and Alertmanager on free loopback ports, and a
webhook receiver. The session's worker (conftest) is scraped as the stable pool.
Scrape and evaluation every second, so the whole run takes a couple of minutes.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from deploy.dashboards.batch import BATCH_PANELS
from deploy.dashboards.generate import DASHBOARDS
from deploy.dashboards.spec import concrete
from deploy.prometheus.config import Targets
from gateway.db.migrate import upgrade
from localstack import observers
from localstack.processes import (
    LocalProcess,
    free_port,
    signal_tree,
    start_gateway,
    start_nginx,
    start_worker,
)
from tests.support.auth import bearer, create_key
from tests.support.mariadb import PrivateMariaDB
from tests.support.redis_server import PrivateRedis
from tests.support.requests import MODEL, chat_body, image_chat_body, vqa_body
from worker.sample_image import png_data_uri

pytestmark = pytest.mark.engine

PANELS = [(spec.uid, panel) for spec in DASHBOARDS for panel in spec.panels]
LIVE_PANELS = [(uid, panel) for uid, panel in PANELS if panel.not_here is None]
# A rate window long enough to hold the whole load phase, short enough to be recent.
WINDOW = "2m"
JSON = {"Content-Type": "application/json"}


@dataclass
class Stack:
    nginx_url: str
    prometheus_url: str
    doomed_worker: LocalProcess
    webhook: observers.WebhookReceiver
    key: str
    limited_key: str


def _stop_all(processes: list[LocalProcess]) -> None:
    for proc in reversed(processes):
        proc.stop(timeout=10)


@pytest.fixture(scope="module")
def stack(worker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("observe")
    processes: list[LocalProcess] = []
    db, redis, webhook = PrivateMariaDB(), PrivateRedis(root / "redis"), observers.WebhookReceiver()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The worker to kill loads for about a minute: meanwhile the rest starts.
        second = pool.submit(start_worker, root / "worker", None, "cpu-tiny", 600.0)
        try:
            db.start()
            redis.start()
            webhook.start()
            database_url = db.create_database("vlm")
            upgrade(database_url)
            key = create_key(database_url, name="observe")
            limited_key = create_key(database_url, "--rpm", "2", name="observe-limited")
            doomed = second.result()
            processes.append(doomed)
            gateway = start_gateway(
                [worker_url, doomed.url],
                root / "gateway",
                env={
                    "GATEWAY_LOG_DATABASE_URL": database_url,
                    "GATEWAY_REDIS_URL": redis.url,
                    "GATEWAY_CACHE_NAMESPACE": f"observe-{uuid.uuid4().hex[:8]}",
                    "GATEWAY_AUTH_ENABLED": "true",
                    "GATEWAY_AUTH_REFRESH_S": "0.5",
                    # Named pools, as a canary rollout runs: the gateway's series carry them.
                    "GATEWAY_WORKER_URLS": "",
                    "GATEWAY_WORKER_POOLS": json.dumps(
                        [
                            {"name": "stable", "weight": 50, "urls": [worker_url]},
                            {"name": "canary", "weight": 50, "urls": [doomed.url]},
                        ]
                    ),
                },
            )
            processes.append(gateway)
            status_port = free_port()
            nginx = start_nginx(
                [f"127.0.0.1:{gateway.port}"], root / "nginx", status_port=status_port
            )
            processes.append(nginx)
            exporters = [
                observers.start_nginx_exporter(
                    root / "exporters", f"http://127.0.0.1:{status_port}/stub_status"
                ),
                observers.start_redis_exporter(root / "exporters", redis.url),
                observers.start_mysqld_exporter(root / "exporters", db.port),
            ]
            processes += exporters
            alertmanager = observers.start_alertmanager(root / "alertmanager", webhook.url)
            processes.append(alertmanager)
            targets = Targets(
                gateways=[f"127.0.0.1:{gateway.port}"],
                workers=[(worker_url.removeprefix("http://"), "stable"),
                         (f"127.0.0.1:{doomed.port}", "canary")],
                nginx_exporter=f"127.0.0.1:{exporters[0].port}",
                redis_exporter=f"127.0.0.1:{exporters[1].port}",
                mysqld_exporter=f"127.0.0.1:{exporters[2].port}",
                alertmanagers=[f"127.0.0.1:{alertmanager.port}"],
            )  # fmt: skip
            prometheus = observers.start_prometheus(root / "prometheus", targets)
            processes.append(prometheus)
            yield Stack(nginx.url, prometheus.url, doomed, webhook, key, limited_key)
        finally:
            if second.done() and second.exception() is None:
                processes.append(second.result())
            _stop_all(processes)
            webhook.stop()
            redis.stop()
            db.remove()


def _drive_load(stack: Stack) -> None:
    """Every kind of answer the panels show: misses and hits, streams, both API shapes,
    400s, a 401 and 429s (the limited key allows 2 requests a minute)."""
    photo = png_data_uri(320, 240, seed=14)
    other = png_data_uri(256, 192, seed=15)
    asked = image_chat_body("Is this bag real leather?", photo, max_tokens=16, temperature=0)
    streamed = {**asked, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=stack.nginx_url, headers=bearer(stack.key), timeout=120) as client:
        for body in (asked, asked, streamed, streamed, chat_body("hi", max_tokens=8)):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        streamed_other = {**streamed, "messages": image_chat_body("Gift?", other)["messages"]}
        assert client.post("/v1/chat/completions", json=streamed_other).status_code == 200
        vqa = vqa_body(photo, "What colour is it?", max_tokens=8)
        assert client.post("/v1/vqa", json=vqa).status_code == 200
        assert client.post("/v1/chat/completions", json={"model": MODEL}).status_code == 400
        broken = client.post("/v1/chat/completions", content=b"{", headers=JSON)
        assert broken.status_code == 400
        refused = client.post("/v1/chat/completions", json=asked, headers=bearer("vlm-nope-x"))
        assert refused.status_code == 401
        statuses = [
            client.post("/v1/vqa", json=vqa, headers=bearer(stack.limited_key)).status_code
            for _ in range(6)
        ]
        assert statuses.count(429) >= 2, statuses  # 2 a minute, even across a window edge


def _missing(stack: Stack) -> list[str]:
    """Panel queries (as Grafana sends them) that return no series."""
    missing = []
    for uid, panel in LIVE_PANELS:
        for query in panel.queries:
            if not observers.query(stack.prometheus_url, concrete(query.expr, WINDOW)):
                missing.append(f"{uid} / {panel.title}: {query.expr}")
    return missing


def test_every_panel_returns_data_then_a_killed_worker_pages(stack: Stack) -> None:
    _drive_load(stack)
    # Poll: the last scrapes and rule evaluations after the load land within seconds.
    deadline = time.monotonic() + 60
    missing = _missing(stack)
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = _missing(stack)
    assert not missing, "panels without data:\n" + "\n".join(missing)
    checked = sum(len(panel.queries) for _, panel in LIVE_PANELS)
    # All but GPU, replication lag and the batch runner's (tests/test_batch_engine.py).
    assert len(LIVE_PANELS) == len(PANELS) - 2 - sum(p.not_here is not None for p in BATCH_PANELS)
    assert checked > 60
    print(f"\n{len(LIVE_PANELS)} of {len(PANELS)} panels ({checked} queries) returned data")

    # Nothing pages on a healthy stack.
    assert not stack.webhook.firing("VlmWorkerDown")
    # The gateway labels its worker series with the pools it was given.
    pools = observers.query(stack.prometheus_url, "sum by (pool) (gateway_worker_requests_total)")
    assert {series["metric"]["pool"] for series in pools} == {"stable", "canary"}
    firing = 'ALERTS{alertname="VlmWorkerDown",alertstate="firing"}'
    assert not observers.query(stack.prometheus_url, firing)

    signal_tree(stack.doomed_worker, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not stack.webhook.firing("VlmWorkerDown") and time.monotonic() < deadline:
        time.sleep(0.5)
    alerts = stack.webhook.firing("VlmWorkerDown")
    assert alerts, f"no VlmWorkerDown reached the webhook; posts: {stack.webhook.posts}"
    alert = alerts[0]
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.doomed_worker.port}"
    assert alert["labels"]["pool"] == "canary"
    # Routed as the shipped config says: a warning goes to the ticket queue, not the pager.
    assert alert["receiver"] == "oncall-tickets"
    assert alert["path"] == "/oncall-tickets"
    assert alert["annotations"]["runbook_url"].endswith("/docs/runbooks.md#vlmworkerdown")
    # The stable worker still serves: nobody is told that no worker is left.
    assert not stack.webhook.firing("VlmNoHealthyWorker")
