"""`make observe`'s pieces without a running stack: the generated prometheus.yml passes
promtool check config, workers keep their pool, the front door's probe and access-log
jobs are wired, Nginx's status server is local-only, and observe.sh up/down leaves
nothing running. The chart's side: the ServiceMonitor labels every series with its
release, and the optional front-door probe renders valid objects sending the same
request as the local one."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.prometheus import blackbox
from deploy.prometheus.check import promtool, rule_files
from deploy.prometheus.config import Targets, main, parse_worker, render
from localstack.processes import free_port
from nginx.render import render as render_nginx
from tests.support.helm import (
    HELM_VENV_BIN,
    MONITORING_API,
    NODE_MODULES,
    Manifest,
    RenderRefused,
    find,
    one,
    profile_values,
    tool_env,
    write_manifests,
)
from tests.support.helm import render as render_chart
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
    probed = render(Targets(gateways=["g:1"], workers=[], blackbox_exporter="b:9115",
                            front_door="http://n:8080/v1/chat/completions",
                            front_door_log="m:3903"))  # fmt: skip
    probe_job = next(j for j in probed["scrape_configs"] if j["job_name"] == "front-door")
    assert probe_job["params"] == {"module": ["vlm_chat"]}
    assert probe_job["static_configs"] == [{"targets": ["http://n:8080/v1/chat/completions"]}]
    assert {"target_label": "__address__", "replacement": "b:9115"} in probe_job["relabel_configs"]
    assert [j["job_name"] for j in probed["scrape_configs"]][-1] == "front-door-log"
    pools = {g["labels"]["pool"]: g["targets"] for g in jobs["vllm-worker"]["static_configs"]}
    assert pools == {"default": ["127.0.0.1:8100"], "canary": ["127.0.0.1:8101"]}


def test_triton_workers_are_scraped_as_their_own_job(tmp_path: Path) -> None:
    """Triton's metrics port, job triton-worker (the chart's ServiceMonitor name, which the
    rules and the Workers dashboard's Triton panels select), each target with its pool."""
    out = tmp_path / "prometheus.yml"
    code = main([
        str(out), "--gateway", "127.0.0.1:8001", "--worker", "127.0.0.1:8100",
        "--triton-worker", "127.0.0.1:8202", "--triton-worker", "canary=127.0.0.1:8203",
    ])  # fmt: skip
    assert code == 0
    result = subprocess.run(
        [promtool(), "check", "config", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in json.loads(out.read_text())["scrape_configs"]}
    pools = {g["labels"]["pool"]: g["targets"] for g in jobs["triton-worker"]["static_configs"]}
    assert pools == {"default": ["127.0.0.1:8202"], "canary": ["127.0.0.1:8203"]}
    vllm = {g["labels"]["pool"]: g["targets"] for g in jobs["vllm-worker"]["static_configs"]}
    assert vllm == {"default": ["127.0.0.1:8100"]}


@pytest.mark.parametrize(
    ("profile", "job", "port_offset"),
    [("cpu-tiny", "vllm-worker", 0), ("triton-cpu-tiny", "triton-worker", 100)],
)
def test_observe_scrapes_the_profiles_workers(
    tmp_path: Path, profile: str, job: str, port_offset: int
) -> None:
    """`make observe PROFILE=triton-cpu-tiny` scrapes Triton's metrics port (the worker's
    port + 100, as deploy/local/stack.sh starts it) as triton-worker; vLLM workers stay
    vllm-worker on their own port."""
    env = {**os.environ, "RUN_DIR": str(tmp_path), "WORKERS": "2", "WORKER_PORT": "8100",
           "PROFILE": profile}  # fmt: skip
    script = str(REPO_ROOT / "deploy" / "local" / "observe.sh")
    done = subprocess.run([script, "config"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    config = json.loads((tmp_path / "observe" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs[job]["static_configs"] for t in group["targets"]]
    assert targets == [f"127.0.0.1:{8100 + port_offset}", f"127.0.0.1:{8101 + port_offset}"]
    other = "vllm-worker" if job == "triton-worker" else "triton-worker"
    assert not [
        t for group in jobs.get(other, {}).get("static_configs", []) for t in group["targets"]
    ]


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
        "BLACKBOX_EXPORTER_PORT", "MTAIL_PORT", "PORT",
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
        assert len(pids) == 7
        # The front door's exporters serve: the probe (failing: nothing listens on PORT)
        # and mtail with the front door's counter program loaded.
        probe = httpx.get(
            f"http://127.0.0.1:{ports['BLACKBOX_EXPORTER_PORT']}/probe",
            params={"module": "vlm_chat", "target": f"http://127.0.0.1:{ports['PORT']}/"},
            timeout=30,
        )
        assert "probe_success 0" in probe.text
        progs = httpx.get(f"http://127.0.0.1:{ports['MTAIL_PORT']}/progz", timeout=10).text
        assert "nginx_front_door.mtail" in progs
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert not list((tmp_path / "pids").glob("obs-*.pid"))
    for pid in pids:
        assert _gone(pid), pid


PROBE_ON = {
    "monitoring": {
        "frontDoorProbe": {"enabled": True, "apiKeySecret": {"name": "probe-key"}},
    }
}


def test_service_monitor_labels_series_with_their_release() -> None:
    objects = render_chart(profile_values("gpu-bf16"), api_versions=(MONITORING_API,))
    relabelings = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["relabelings"]
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
        "targetLabel": "release",
    } in relabelings


def test_chart_front_door_probe_sends_the_local_probes_request() -> None:
    objects = render_chart(profile_values("canary", PROBE_ON), api_versions=(MONITORING_API,))
    config = yaml.safe_load(one(objects, "ConfigMap", "rel-vlm-serve-front-door-probe")
                            ["data"]["blackbox.yml"])  # fmt: skip
    # The model the helm test pod asks for: the first enabled pool's served name.
    expected = blackbox.module(_served_model(objects), "/etc/front-door-probe/api-key")
    assert config["modules"]["vlm_chat"] == expected
    probe = one(objects, "Probe")
    assert probe["spec"]["jobName"] == blackbox.JOB
    assert probe["spec"]["targets"]["staticConfig"]["labels"] == {
        "namespace": "vlm", "release": "rel",
    }  # fmt: skip
    assert probe["spec"]["targets"]["staticConfig"]["static"] == [
        "http://rel-vlm-serve-gateway.vlm.svc.cluster.local:8000/v1/chat/completions"
    ]
    # The front door admits the probe; without the CRDs there is no Probe, the rest stays.
    assert one(objects, "NetworkPolicy", "rel-vlm-serve-front-door-probe-to-front-door")
    assert not find(render_chart(profile_values("canary", PROBE_ON)), "Probe")


def _served_model(objects: list[Manifest]) -> str:
    pod = one(objects, "Pod")  # the helm test pod is given the served model
    args: list[str] = pod["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--model="))


def test_chart_front_door_probe_needs_a_key_when_keys_are_on() -> None:
    no_key = {"monitoring": {"frontDoorProbe": {"enabled": True}}}
    with pytest.raises(RenderRefused, match="apiKeySecret"):
        render_chart(profile_values("gpu-bf16", no_key))


def test_chart_front_door_probe_objects_validate(tmp_path: Path) -> None:
    values = profile_values("gpu-bf16", PROBE_ON, {"nginx": {"enabled": True}})
    objects = render_chart(values, api_versions=(MONITORING_API,))
    ours = [o for o in objects if "front-door-probe" in o["metadata"]["name"]]
    assert sorted(o["kind"] for o in ours) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "Probe", "Service",
    ]  # fmt: skip
    plain = write_manifests([o for o in ours if o["kind"] != "Probe"], tmp_path)
    checked = subprocess.run(
        [str(HELM_VENV_BIN / "kubernetes-validate"), "-k", "1.31.0", "--strict", "--quiet",
         *map(str, plain)],
        capture_output=True, text=True, env=tool_env(), check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    script = str(REPO_ROOT / "helm" / "tools" / "validate-crds.mjs")
    crd = subprocess.run(
        ["node", script, str(NODE_MODULES)], input=json.dumps([one(ours, "Probe")]),
        capture_output=True, text=True, env=tool_env(), check=False,
    )  # fmt: skip
    assert crd.returncode == 0, crd.stdout + crd.stderr
    assert crd.stdout.startswith("OK monitoring.coreos.com/v1/Probe")
    # Behind the chart's Nginx, the probe goes through it (its container port).
    front = one(ours, "NetworkPolicy", "rel-vlm-serve-front-door-probe-to-front-door")
    assert front["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "nginx"
