"""`make observe`'s pieces without a running stack: the generated prometheus.yml passes
promtool check config, workers keep their pool, Nginx's status server is local-only,
and observe.sh up/down leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from deploy.prometheus.check import promtool, rule_files
from deploy.prometheus.config import Targets, main, parse_worker, render
from localstack.processes import free_port
from nginx.render import render as render_nginx
from worker.profiles import REPO_ROOT


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """The process has exited (and was reaped, or is a zombie awaiting its reaper)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_parse_worker() -> None:
    assert parse_worker("127.0.0.1:8100") == ("127.0.0.1:8100", "default")
    assert parse_worker("canary=10.0.0.7:8000") == ("10.0.0.7:8000", "canary")


def test_config_passes_promtool(tmp_path: Path) -> None:
    out = tmp_path / "prometheus.yml"
    code = main([
        str(out), "--gateway", "127.0.0.1:8001", "--gateway", "127.0.0.1:8002",
        "--worker", "127.0.0.1:8100", "--worker", "canary=127.0.0.1:8101",
        "--nginx-exporter", "127.0.0.1:9113", "--redis-exporter", "127.0.0.1:9121",
        "--mysqld-exporter", "127.0.0.1:9104", "--alertmanager", "127.0.0.1:9093",
        "--scrape-interval", "5s",
    ])  # fmt: skip
    assert code == 0
    result = subprocess.run(
        [promtool(), "check", "config", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout
    config = json.loads(out.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"gateway", "vllm-worker", "nginx", "redis", "mysql"}
    pools = {g["labels"]["pool"]: g["targets"] for g in jobs["vllm-worker"]["static_configs"]}
    assert pools == {"default": ["127.0.0.1:8100"], "canary": ["127.0.0.1:8101"]}


def test_exporters_are_optional() -> None:
    config = render(Targets(gateways=["g:1"], workers=[("w:1", "default")]))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["gateway", "vllm-worker"]
    assert "alerting" not in config


def test_nginx_status_server_is_separate_and_local(tmp_path: Path) -> None:
    conf = render_nginx(
        "127.0.0.1:8080", ["127.0.0.1:8001"], tmp_path, tmp_path, 1024, 30,
        status_listen="127.0.0.1:8089",
    )  # fmt: skip
    status_server = conf.split("listen 127.0.0.1:8089;", 1)[1]
    assert "stub_status;" in status_server
    assert "allow 127.0.0.1;" in status_server
    assert "deny all;" in status_server
    assert conf.rstrip().endswith("}")
    plain = render_nginx("127.0.0.1:8080", ["127.0.0.1:8001"], tmp_path, tmp_path, 1024, 30)
    assert "8089" not in plain


def test_observe_up_and_down(tmp_path: Path) -> None:
    """The real script on free ports, scraping nothing that runs: it starts Prometheus
    and Alertmanager with the shipped files, prints their URLs, and `down` stops all."""
    ports = {name: str(free_port()) for name in (
        "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "NGINX_EXPORTER_PORT", "REDIS_EXPORTER_PORT",
        "MYSQLD_EXPORTER_PORT", "NGINX_STATUS_PORT", "WORKER_PORT", "GATEWAY_BASE_PORT",
    )}  # fmt: skip
    # Nothing of make up's: the scrape targets are free ports; Redis and MySQL unreachable.
    env = {**os.environ, **ports, "RUN_DIR": str(tmp_path), "WORKERS": "1",
           "GATEWAY_REPLICAS": "1", "REDIS_ADDR": f"redis://127.0.0.1:{free_port()}",
           "MYSQL_DSN": f"root:@(127.0.0.1:{free_port()})/"}  # fmt: skip
    script = str(REPO_ROOT / "deploy" / "local" / "observe.sh")
    try:
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}" in up.stdout
        assert f"http://127.0.0.1:{ports['ALERTMANAGER_PORT']}" in up.stdout
        rules = httpx.get(f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/rules").json()
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "VlmNoHealthyWorker" in names
        pids = [int(p.read_text()) for p in (tmp_path / "pids").glob("obs-*.pid")]
        assert len(pids) == 5
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert not list((tmp_path / "pids").glob("obs-*.pid"))
    for pid in pids:
        assert _gone(pid), pid
