"""Live: Prometheus (Debian's) scrapes a running stack with the shipped rules, vLLM and
Triton workers; every dashboard panel's query returns data; then three drills, each
ending at the webhook behind the shipped Alertmanager config: a SIGKILLed worker (a
ticket), errors answered at the front door by Nginx itself (a page), and every worker
stopped as the gateways see it while they run and Prometheus still scrapes them (a page
nothing paged before).

Everything here is this test's own: a second cpu-tiny worker (the one it kills), a
gateway process, Nginx with stub_status on a port of its own, a private Redis and
MariaDB, the three exporters, the front door's blackbox probe and mtail on Nginx's access
log, Prometheus and Alertmanager on free loopback ports, and a webhook receiver. The
session's worker (conftest) is the stable pool, reached by the gateway through a TCP
proxy this test can close (the session's worker itself is never stopped); so is the
session's Triton worker (conftest's triton_worker), the pool "triton", through two such
proxies (its KServe port and its metrics port, which the gateway reads for load), while
Prometheus scrapes its metrics port as job triton-worker. Scrape and
evaluation every second, and the rules' `for:` divided by FOR_SCALE (the shipped
durations are the promtool tests'), so the whole run takes a few minutes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from deploy.dashboards.batch import BATCH_PANELS
from deploy.dashboards.generate import DASHBOARDS
from deploy.dashboards.spec import concrete
from deploy.prometheus.config import Targets
from gateway.db.migrate import upgrade
from localstack import observers
from localstack.fault_proxy import FaultProxy
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
from tests.support.triton import TRITON_PROFILE, TritonWorker
from worker.sample_image import png_data_uri
from worker.triton.pools import triton_pool

pytestmark = pytest.mark.engine

PANELS = [(spec.uid, panel) for spec in DASHBOARDS for panel in spec.panels]
LIVE_PANELS = [(uid, panel) for uid, panel in PANELS if panel.not_here is None]
# A rate window long enough to hold the whole load phase, short enough to be recent.
WINDOW = "2m"
JSON = {"Content-Type": "application/json"}
# The rules' `for:` (1 m, 2 m ...) divided by this: the drills page in seconds.
FOR_SCALE = 6
T = TypeVar("T")


class ThreadedProxy:
    """localstack's FaultProxy on an event loop of its own, for this synchronous test."""

    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._proxy = FaultProxy(host, port)
        self._call(self._proxy.__aenter__())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    @property
    def url(self) -> str:
        return self._proxy.url

    @property
    def port(self) -> int:
        return self._proxy.port

    def stop_listening(self) -> None:
        """Connections are refused from now on, as by a stopped worker."""
        self._call(self._proxy.stop_listening())

    def close(self) -> None:
        self._call(self._proxy.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Stack:
    nginx_url: str
    nginx: LocalProcess
    nginx_conf: Path
    gateway_port: int
    prometheus_url: str
    doomed_worker: LocalProcess
    stable_link: ThreadedProxy
    # The gateway's way to the Triton worker: its KServe port, then its metrics port.
    triton_links: tuple[ThreadedProxy, ThreadedProxy]
    webhook: observers.WebhookReceiver
    key: str
    limited_key: str


def _stop_all(processes: list[LocalProcess]) -> None:
    for proc in reversed(processes):
        proc.stop(timeout=10)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _triton_links(triton: TritonWorker) -> tuple[ThreadedProxy, ThreadedProxy]:
    api = ThreadedProxy("127.0.0.1", _port(triton.url))
    metrics = ThreadedProxy("127.0.0.1", _port(triton.url) + triton.metrics_port_offset)
    return api, metrics


@pytest.fixture(scope="module")
def stack(
    worker_url: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("observe")
    processes: list[LocalProcess] = []
    db, redis, webhook = PrivateMariaDB(), PrivateRedis(root / "redis"), observers.WebhookReceiver()
    stable_link = ThreadedProxy("127.0.0.1", _port(worker_url))
    links: list[ThreadedProxy] = [stable_link]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The worker to kill loads for about a minute: meanwhile the rest starts (the
        # session's Triton worker too, when no test before started it).
        second = pool.submit(start_worker, root / "worker", None, "cpu-tiny", 600.0)
        try:
            triton: TritonWorker = request.getfixturevalue("triton_worker")
            triton.ensure_running()
            triton_api, triton_metrics = _triton_links(triton)
            links += [triton_api, triton_metrics]
            # The gateway finds the metrics port at its KServe port + the offset.
            triton_offset = triton_metrics.port - triton_api.port
            triton_scraped = f"127.0.0.1:{_port(triton.url) + triton.metrics_port_offset}"
            db.start()
            redis.start()
            webhook.start()
            database_url = db.create_database("vlm")
            upgrade(database_url)
            key = create_key(database_url, name="observe")
            limited_key = create_key(database_url, "--rpm", "2", name="observe-limited")
            probe_key = root / "front-door-probe.key"
            probe_key.write_text(create_key(database_url, name="front-door-probe"))
            doomed = second.result()
            processes.append(doomed)
            gateway = start_gateway(
                [stable_link.url, doomed.url],
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
                            {"name": "stable", "weight": 50, "urls": [stable_link.url]},
                            {"name": "canary", "weight": 50, "urls": [doomed.url]},
                            {
                                **triton_pool(
                                    TRITON_PROFILE, [triton_api.url], triton_offset, "triton"
                                ),
                                "weight": 50,
                            },
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
            nginx_dir = (root / "nginx").resolve() / f"nginx-{nginx.port}"
            exporters = [
                observers.start_nginx_exporter(
                    root / "exporters", f"http://127.0.0.1:{status_port}/stub_status"
                ),
                observers.start_redis_exporter(root / "exporters", redis.url),
                observers.start_mysqld_exporter(root / "exporters", db.port),
                observers.start_blackbox_exporter(root / "exporters", MODEL, probe_key),
                observers.start_mtail(root / "exporters", nginx_dir / "nginx-access.json"),
            ]
            processes += exporters
            alertmanager = observers.start_alertmanager(root / "alertmanager", webhook.url)
            processes.append(alertmanager)
            targets = Targets(
                gateways=[f"127.0.0.1:{gateway.port}"],
                # Prometheus scrapes the stable worker itself, not through the gateway's link.
                workers=[(worker_url.removeprefix("http://"), "stable"),
                         (f"127.0.0.1:{doomed.port}", "canary")],
                triton_workers=[(triton_scraped, "triton")],
                nginx_exporter=f"127.0.0.1:{exporters[0].port}",
                redis_exporter=f"127.0.0.1:{exporters[1].port}",
                mysqld_exporter=f"127.0.0.1:{exporters[2].port}",
                alertmanagers=[f"127.0.0.1:{alertmanager.port}"],
                blackbox_exporter=f"127.0.0.1:{exporters[3].port}",
                front_door=f"{nginx.url}/v1/chat/completions",
                front_door_log=f"127.0.0.1:{exporters[4].port}",
                probe_interval="5s",
            )  # fmt: skip
            rules = observers.scaled_rules(root / "rules", FOR_SCALE)
            prometheus = observers.start_prometheus(root / "prometheus", targets, rules=rules)
            processes.append(prometheus)
            yield Stack(
                nginx.url, nginx, nginx_dir / "nginx.conf", gateway.port, prometheus.url,
                doomed, stable_link, (triton_api, triton_metrics), webhook, key, limited_key,
            )  # fmt: skip
        finally:
            if second.done() and second.exception() is None:
                processes.append(second.result())
            _stop_all(processes)
            for link in links:
                link.close()
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
        # Misses in a row: the pools take turns (equal weights), so the Triton pool
        # answers some whatever the probe's requests took.
        for i in range(3):
            body = chat_body(f"Which pool answers {i}?", max_tokens=4)
            assert client.post("/v1/chat/completions", json=body).status_code == 200
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


def _wait_for(what: str, condition: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _paged(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    return [a for a in stack.webhook.firing(alertname) if a["receiver"] == "oncall-pager"]


def _point_nginx_at(stack: Stack, upstream: str) -> None:
    """Rewrite Nginx's upstream and reload it (SIGHUP), as a bad config rollout would."""
    conf = stack.nginx_conf.read_text()
    current = conf.split("upstream gateways {", 1)[1].split("server ", 1)[1].split(" ", 1)[0]
    stack.nginx_conf.write_text(conf.replace(f"server {current} ", f"server {upstream} "))
    os.kill(stack.nginx.process.pid, signal.SIGHUP)


def _front_door_status(stack: Stack) -> int:
    with httpx.Client(timeout=10) as client:
        return client.get(f"{stack.nginx_url}/healthz").status_code


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
    # All but GPU (2), replication lag, kube-state-metrics (2), NVIDIA's Triton backend
    # (2) and the batch runner's (tests/test_batch_engine.py): series a CPU host or this
    # test lacks.
    batch = sum(p.not_here is not None for p in BATCH_PANELS)
    assert len(LIVE_PANELS) == len(PANELS) - 7 - batch
    assert checked > 70
    # Triton's own series among them, scraped under job triton-worker with their pool.
    triton_checked = [
        q.expr for _, panel in LIVE_PANELS for q in panel.queries if "triton-worker" in q.expr
    ]
    assert len(triton_checked) >= 9, triton_checked
    for series in (
        'up{job="triton-worker", pool="triton"} == 1',
        'nv_inference_request_success{job="triton-worker", pool="triton", model="vllm_model"}',
        'nv_inference_pending_request_count{job="triton-worker", pool="triton"}',
        'vllm:num_requests_waiting{job="triton-worker", pool="triton"}',
    ):
        assert observers.query(stack.prometheus_url, series), series
    print(f"\n{len(LIVE_PANELS)} of {len(PANELS)} panels ({checked} queries) returned data")

    # Nothing pages on a healthy stack, and the pager path itself works: the Watchdog
    # reaches the heartbeat receiver (a dead man's switch pages when it stops).
    assert not stack.webhook.firing("VlmWorkerDown")
    assert not [post for post in stack.webhook.posts if post["receiver"] == "oncall-pager"]
    _wait_for("the Watchdog at the heartbeat route", lambda: stack.webhook.firing("Watchdog"))
    assert stack.webhook.firing("Watchdog")[0]["path"] == "/heartbeat"
    # The gateway labels its worker series with the pools it was given.
    pools = observers.query(stack.prometheus_url, "sum by (pool) (gateway_worker_requests_total)")
    assert {series["metric"]["pool"] for series in pools} == {"stable", "canary", "triton"}
    # The Triton pool answered through the gateway, and Triton counted it.
    assert observers.query(
        stack.prometheus_url,
        'gateway_worker_requests_total{pool="triton", outcome="ok"} > 0',
    )
    # Triton counted at least what the gateway sent it (not an increase(): the requests
    # may all land before Prometheus's first scrape of the worker).
    served = (
        'sum(nv_inference_request_success{job="triton-worker", model="vllm_model"}) >= '
        'scalar(sum(gateway_worker_requests_total{pool="triton", outcome="ok"}))'
    )
    assert observers.query(stack.prometheus_url, served)
    firing = 'ALERTS{alertname="VlmWorkerDown",alertstate="firing"}'
    assert not observers.query(stack.prometheus_url, firing)

    # Drill 1 (a ticket) and drill 2 (a page), side by side: the canary worker is killed,
    # and Nginx is reloaded pointing at a port where no gateway listens, so it answers
    # 503 itself: no gateway counts those, the gateway's `up` stays 1.
    signal_tree(stack.doomed_worker, signal.SIGKILL)
    _point_nginx_at(stack, f"127.0.0.1:{free_port()}")
    _wait_for("Nginx to answer by itself", lambda: _front_door_status(stack) == 503)

    _wait_for("VlmWorkerDown at the webhook", lambda: stack.webhook.firing("VlmWorkerDown"))
    alert = stack.webhook.firing("VlmWorkerDown")[0]
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.doomed_worker.port}"
    assert alert["labels"]["pool"] == "canary"
    # Routed as the shipped config says: a warning goes to the ticket queue, not the pager.
    assert alert["receiver"] == "oncall-tickets"
    assert alert["path"] == "/oncall-tickets"
    assert alert["annotations"]["runbook_url"].endswith("/docs/runbooks.md#vlmworkerdown")
    # The stable worker still serves: nobody is told that no worker is left.
    assert not stack.webhook.firing("VlmNoHealthyWorker")

    _wait_for("VlmFrontDoorDown at the pager", lambda: _paged(stack, "VlmFrontDoorDown"))
    door = _paged(stack, "VlmFrontDoorDown")[0]
    assert door["labels"]["instance"] == f"{stack.nginx_url}/v1/chat/completions"
    assert "viewPanel=4" in door["annotations"]["dashboard"]
    # Nginx's own 503s reach the availability SLI through its access log.
    own = 'vlm_frontdoor_requests_total{answered_by="nginx",status="503"}'
    assert observers.query(stack.prometheus_url, f"{own} > 0")
    assert observers.query(stack.prometheus_url, "vlm:slo_availability:bad_rate5m > 0")
    assert observers.query(stack.prometheus_url, 'up{job="gateway"} == 1')

    # Drill 3: Nginx is fixed; then every worker is stopped as the gateway sees it (the
    # canary is dead, the stable's and the Triton worker's ports close to the gateway)
    # while the gateway runs and Prometheus still scrapes both: `up` alone pages nobody.
    _point_nginx_at(stack, f"127.0.0.1:{stack.gateway_port}")
    _wait_for("Nginx to reach the gateway again", lambda: _front_door_status(stack) == 200)
    for link in (stack.stable_link, *stack.triton_links):
        link.stop_listening()
    _wait_for("VlmNoReachableWorker at the pager", lambda: _paged(stack, "VlmNoReachableWorker"))
    page = _paged(stack, "VlmNoReachableWorker")[0]
    assert page["path"] == "/oncall-pager"
    assert page["annotations"]["runbook_url"].endswith("#vlmnoreachableworker")
    assert observers.query(stack.prometheus_url, 'up{job="vllm-worker",pool="stable"} == 1')
    assert observers.query(stack.prometheus_url, 'up{job="triton-worker",pool="triton"} == 1')
    assert not stack.webhook.firing("VlmNoHealthyWorker")
    assert not observers.query(stack.prometheus_url, 'ALERTS{alertname="VlmNoHealthyWorker"}')
