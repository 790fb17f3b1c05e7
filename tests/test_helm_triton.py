"""Triton in the chart: gpu-triton (NVIDIA's tritonserver vLLM container, the official
vLLM backend, its model repository rendered by the chart), triton-cpu-tiny (our own CPU
Triton image), a Triton canary beside vLLM workers, and what the gateways are told."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cache.keys import derive_key
from gateway.config import Settings
from gateway.upstream.kserve.template import read_chat_template
from gateway.upstream.settings import PoolSpec
from localstack.processes import free_port
from tests.support.helm import (
    MONITORING_API,
    Manifest,
    RenderRefused,
    container,
    env_of,
    find,
    notes,
    one,
    pod_spec,
    profile_values,
    render,
)
from worker.profiles import PROFILES as WORKER_PROFILES
from worker.profiles import REPO_ROOT
from worker.tiny_model import CHAT_TEMPLATE
from worker.triton.launcher import engine_args

GATEWAY_PY = str(REPO_ROOT / ".venv" / "bin" / "python")
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")
BF16 = WORKER_PROFILES["gpu-bf16"]
NVIDIA_IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-vllm-python-py3$")
PVC = {"workers": {"modelStorage": {"mode": "pvc", "pvc": {"storageClassName": "efs-sc"}}}}


def _worker(objects: list[Manifest], pool: str = "stable") -> Manifest:
    return one(objects, "Deployment", f"rel-vlm-serve-worker-{pool}")


def _gateway_pools(objects: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> dict[str, PoolSpec]:
    """The pools as the gateway itself reads them from its rendered environment."""
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    for name, value in env_of(gateway).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    return {pool.name: pool for pool in Settings().pools()}


def _model_repository(objects: list[Manifest], pool: str = "stable") -> dict[str, str]:
    """The files Triton finds under --model-repository, as the ConfigMap volume maps them."""
    spec = pod_spec(_worker(objects, pool))
    volume = next(v for v in spec["volumes"] if v["name"] == "model-repository")
    data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    return {item["path"]: data[item["key"]] for item in volume["configMap"]["items"]}


def _args(cont: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in cont["args"] if "=" in a)


def test_gpu_triton_runs_nvidias_vllm_container_on_a_rendered_model_repository() -> None:
    values = profile_values("gpu-triton")
    objects = render(values)
    deployment = _worker(objects)
    worker = container(deployment, "worker")
    assert NVIDIA_IMAGE.match(worker["image"]), worker["image"]
    # NVIDIA's entrypoint (driver checks, CUDA compatibility) stays: arguments only.
    assert "command" not in worker
    assert worker["args"][0] == "tritonserver"
    args = _args(worker)
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "model-repository")
    assert args["model-repository"] == mount["mountPath"]
    assert mount["readOnly"] is True
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert int(args["http-port"]) == ports["http"] == 8000
    assert int(args["metrics-port"]) == ports["metrics"] == 8002
    assert args["strict-readiness"] == "true"
    assert args["allow-grpc"] == "false"
    # SIGTERM: running generations finish within the chart's drain budget.
    assert int(args["exit-timeout-secs"]) == 60
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    pre_stop = int(worker["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace >= pre_stop + int(args["exit-timeout-secs"])

    repository = _model_repository(objects)
    assert set(repository) == {"vllm_model/config.pbtxt", "vllm_model/1/model.json"}
    config = repository["vllm_model/config.pbtxt"]
    assert 'backend: "vllm"' in config
    assert "KIND_MODEL" in config
    assert re.search(r'key: "REPORT_CUSTOM_METRICS" value: \{ string_value: "true" \}', config)
    # The engine arguments gpu-bf16 gives vLLM's own server (worker/profiles.py), at the
    # pinned commit, with statistics on for the metrics port.
    model = json.loads(repository["vllm_model/1/model.json"])
    assert model == {
        **engine_args(BF16),
        "revision": BF16.revision,
        "tensor_parallel_size": 1,
        "disable_log_stats": False,
    }
    # The GPUs and the download as for the vLLM workers; no launcher settings.
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not [name for name in env_of(worker) if name.startswith("WORKER_")]


def _triton_index(repository: Path, log: Path) -> list[dict[str, Any]]:
    """The real tritonserver (Triton 2.51, from nvidia-pytriton) started on a model
    repository: its repository index, each model's state and reason."""
    (site,) = (REPO_ROOT / ".venv-triton").glob("lib/python3*/site-packages")
    server = site / "pytriton" / "tritonserver"
    port = free_port()
    cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={repository}",
           f"--backend-directory={server / 'backends'}", f"--http-port={port}",
           "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=false",
           "--model-control-mode=none"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/repository/index", data=b"{}", method="POST"
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    index: list[dict[str, Any]] = json.loads(response.read())
                    return index
            except OSError:
                assert process.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_tritons_own_parser_reads_the_rendered_model_repository(tmp_path: Path) -> None:
    """The ConfigMap laid out as the pod mounts it, given to a real tritonserver: the model
    and its version are found and config.pbtxt parses; only the backend is missing here
    (the official vLLM backend lives in NVIDIA's container)."""
    repository = tmp_path / "repository"
    for path, text in _model_repository(render(profile_values("gpu-triton"))).items():
        (repository / path).parent.mkdir(parents=True, exist_ok=True)
        (repository / path).write_text(text)
    (model,) = _triton_index(repository, tmp_path / "triton.log")
    assert model["name"] == "vllm_model"
    assert model["version"] == "1"
    assert "unable to find backend library for backend 'vllm'" in model["reason"]
    # ...and the parser does refuse a wrong config: no version ever gets a state.
    config = repository / "vllm_model" / "config.pbtxt"
    config.write_text(config.read_text().replace("backend:", "bakend:"))
    (model,) = _triton_index(repository, tmp_path / "triton-broken.log")
    assert "state" not in model
    assert "bakend" in (tmp_path / "triton-broken.log").read_text()


def test_gpu_triton_probes_wait_for_the_model_load_and_the_drain() -> None:
    objects = render(profile_values("gpu-triton"))
    worker = container(_worker(objects), "worker")
    startup, live, ready = worker["startupProbe"], worker["livenessProbe"], worker["readinessProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200  # download + load
    assert live["httpGet"]["path"] == "/v2/health/live"
    # Triton reports itself not live while it drains: liveness outlasts the exit timeout.
    assert live["periodSeconds"] * live["failureThreshold"] >= int(
        _args(worker)["exit-timeout-secs"]
    )
    assert ready["httpGet"]["path"] == "/v2/health/ready"
    for probe in (startup, live, ready):
        assert probe["httpGet"]["port"] == "http"


def test_the_model_json_is_valid_for_vllms_engine_and_takes_the_pools_arguments() -> None:
    mine = {"triton": {"engineArgs": {"max_num_seqs": 64, "limit_mm_per_prompt": {"image": 2}}}}
    objects = render(profile_values("gpu-triton", {"workers": {"pools": {"stable": mine}}},
                                    {"workers": {"pools": {"stable": {"gpus": 2}}}}))  # fmt: skip
    model = json.loads(_model_repository(objects)["vllm_model/1/model.json"])
    assert model["max_num_seqs"] == 64
    assert model["limit_mm_per_prompt"] == {"image": 2, "video": 0}  # merged, not replaced
    assert model["tensor_parallel_size"] == 2
    # The official backend builds AsyncEngineArgs(**model.json): every key must be one.
    check = (
        "import json, sys\n"
        "from vllm.engine.arg_utils import AsyncEngineArgs\n"
        "AsyncEngineArgs(**json.load(sys.stdin))\n"
    )
    done = subprocess.run(
        [WORKER_PY, "-c", check], input=json.dumps(model), capture_output=True, text=True,
        timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "worker/boot")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    wrong = dict(model, max_num_seqz=1)
    done = subprocess.run(
        [WORKER_PY, "-c", check], input=json.dumps(wrong), capture_output=True, text=True,
        timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "worker/boot")},
    )  # fmt: skip
    assert done.returncode != 0
    assert "max_num_seqz" in done.stderr
    # A new repository rolls the workers: Triton reads it once.
    before = _worker(render(profile_values("gpu-triton")))
    after = _worker(objects)
    key = "checksum/model-repository"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


@pytest.mark.parametrize("profile", ["gpu-triton", "canary-triton", "dev-triton"])
def test_the_gateway_is_told_each_triton_pool_and_how_to_reach_it(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(profile_values(profile))
    pools = _gateway_pools(objects, monkeypatch)
    triton_name = "canary" if profile == "canary-triton" else "stable"
    pool = pools[triton_name]
    assert pool.engine == "triton"
    assert pool.triton is not None
    worker_profile = "triton-cpu-tiny" if profile == "dev-triton" else "gpu-bf16"
    assert pool.triton.served_model == WORKER_PROFILES[worker_profile].served_model_name
    assert pool.triton.model == "vllm_model"
    assert pool.triton.max_model_len == WORKER_PROFILES[worker_profile].max_model_len
    # The headless Service the DNS name resolves to, and Triton's metrics port beside it.
    service = one(objects, "Service", f"rel-vlm-serve-worker-{triton_name}")
    assert pool.dns == (f"http://{service['metadata']['name']}.vlm.svc.cluster.local:8000",)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["api"]["port"] == 8000
    assert ports["metrics"]["port"] == 8000 + pool.triton.metrics_port_offset
    worker = container(_worker(objects, triton_name), "worker")
    container_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert container_ports[ports["metrics"]["targetPort"]] == ports["metrics"]["port"]
    # The chat template is where a volume of the gateway container puts it.
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    parent = str(Path(pool.triton.chat_template).parent)
    assert parent in mounts, (pool.triton.chat_template, mounts)
    if profile == "canary-triton":
        assert pools["stable"].engine == "vllm"
        assert {p.name: p.weight for p in pools.values()} == {"stable": 95, "canary": 5}


def test_dev_triton_runs_our_cpu_triton_image_through_the_launcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(profile_values("dev-triton"))
    worker = container(_worker(objects), "worker")
    assert worker["image"] == "ghcr.io/vlm-serve/worker-cpu:0.1.0-tiny-triton-cpu"
    assert worker["args"][:4] == ["python3", "-m", "worker", "serve"]
    assert "--profile=triton-cpu-tiny" in worker["args"]
    env = {k: v for k, v in env_of(worker).items() if isinstance(v, str)}
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert int(env["WORKER_METRICS_PORT"]) == ports["metrics"]
    printed = subprocess.run(
        [GATEWAY_PY, "-m", "worker", "args", *worker["args"][4:]], cwd=REPO_ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(printed)["profile"]["engine"] == "triton"
    assert worker["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert worker["readinessProbe"]["exec"]["command"][:4] == ["python3", "-m", "worker", "ready"]
    # The gateway renders the tiny model's own template, from the chart's ConfigMap.
    pool = _gateway_pools(objects, monkeypatch)["stable"]
    assert pool.triton is not None
    data = one(objects, "ConfigMap", "rel-vlm-serve-chat-templates")["data"]
    assert pool.triton.chat_template == "/etc/vlm-serve/chat-templates/stable.jinja"
    assert data == {"stable.jinja": CHAT_TEMPLATE}
    assert pool.triton.checkpoint == "/app/.models/tiny-qwen3-vl"  # where the image has it


def _stable_root(objects: list[Manifest]) -> str:
    """What the stable vLLM pool's workers report as their checkpoint (`root`): vLLM's
    --model, from the launcher given the rendered container's arguments and environment."""
    worker = container(_worker(objects), "worker")
    env = {k: v for k, v in env_of(worker).items() if isinstance(v, str)}
    printed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *worker["args"][4:]], cwd=REPO_ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    command: list[str] = json.loads(printed)["command"]
    return command[command.index("--model") + 1]


@pytest.mark.parametrize("storage", ["hub", "pvc"])
def test_a_triton_canary_shares_cache_entries_with_vllm_only_when_the_key_says_so(
    storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same checkpoint, different engine: the answer-cache key of the Triton pool differs
    from the vLLM pool's unless shareCache is set, and then it is the very same key."""
    extra = PVC if storage == "pvc" else {}
    if storage == "pvc":  # the gateway pods cannot read the checkpoint: the user gives it
        template = {"triton": {"chatTemplate": "{{ messages[0]['content'] }}"}}
        extra = {**extra, "workers": {**extra["workers"], "pools": {"canary": template}}}
    request = b'{"messages":[{"role":"user","content":"is this bag leather?"}]}'

    def keys(share: bool) -> tuple[str, str, PoolSpec]:
        share_values = {"workers": {"pools": {"canary": {"triton": {"shareCache": share}}}}}
        objects = render(profile_values("canary-triton", extra, share_values))
        canary = _gateway_pools(objects, monkeypatch)["canary"]
        assert canary.triton is not None
        root = _stable_root(objects)
        vllm_key = derive_key("vlm", "Qwen/Qwen3-VL-8B-Instruct", root, request, [])
        triton_key = derive_key(
            "vlm", "Qwen/Qwen3-VL-8B-Instruct", canary.triton.cache_root, request, []
        )
        assert canary.triton.checkpoint == root  # the same weights, named the same way
        return vllm_key, triton_key, canary

    vllm_key, triton_key, canary = keys(share=False)
    assert canary.triton is not None
    assert canary.triton.share_cache is False
    assert vllm_key != triton_key
    vllm_key, triton_key, canary = keys(share=True)
    assert canary.triton is not None
    assert canary.triton.share_cache is True
    assert vllm_key == triton_key


def test_the_gateway_reads_the_checkpoints_template_at_the_pinned_commit(tmp_path: Path) -> None:
    """The gateway pods' init container under sh, with a stand-in for `hf` (the hub is not
    reachable here) that serves the files a checkpoint may hold."""
    objects = render(profile_values("canary-triton"))
    gateway = one(objects, "Deployment", "rel-vlm-serve-gateway")
    init = pod_spec(gateway)["initContainers"][0]
    script = init["args"][0]
    assert init["image"] == container(gateway)["image"]  # the hf CLI of the gateway image
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    shared = mounts["fetched-chat-templates"]
    assert {m["name"]: m["mountPath"] for m in container(gateway)["volumeMounts"]}[
        "fetched-chat-templates"
    ] == shared

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(GATEWAY_PY)
    served = tmp_path / "checkpoint"
    fake = bin_dir / "hf"
    fake.write_text(
        '#!/bin/sh\necho "$@" >> "$HF_CALLS"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && dir="$2"; shift; done\n'
        'mkdir -p "$dir" && cp "$SERVED"/* "$dir"/ 2>/dev/null; exit 0\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    def run(files: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], Path]:
        served.mkdir(exist_ok=True)
        for old in served.iterdir():
            old.unlink()
        for name, text in files.items():
            (served / name).write_text(text)
        root = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "HF_CALLS": str(tmp_path / "calls"), "SERVED": str(served)}  # fmt: skip
        done = subprocess.run(
            ["sh", "-c", script.replace(shared, str(root))], capture_output=True, text=True,
            timeout=60, env=env, check=False,
        )  # fmt: skip
        return done, root / "canary"

    processor = "{{ 'processor' }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer = "{{ 'tokenizer' }}"
    # The processor's chat_template.json wins, as vLLM reads it; the gateway reads the folder.
    done, folder = run({
        "chat_template.json": json.dumps({"chat_template": processor}),
        "tokenizer_config.json": json.dumps({"chat_template": tokenizer}),
    })  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_chat_template(str(folder)) == processor
    calls = (tmp_path / "calls").read_text()
    assert f"--revision {BF16.revision}" in calls
    assert "download Qwen/Qwen3-VL-8B-Instruct " in calls
    # A checkpoint with the template in its tokenizer config only.
    done, folder = run({"tokenizer_config.json": json.dumps({"chat_template": tokenizer})})
    assert done.returncode == 0, done.stderr
    assert read_chat_template(str(folder)) == tokenizer
    # None at all: the pod says which checkpoint and which value to set.
    done, _ = run({"tokenizer_config.json": "{}"})
    assert done.returncode != 0
    assert f"Qwen/Qwen3-VL-8B-Instruct@{BF16.revision} has no chat template" in done.stderr
    assert "workers.pools.canary.triton.chatTemplate" in done.stderr


def test_a_template_given_in_the_values_needs_no_hub() -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    pool = {"triton": {"chatTemplate": template}}
    objects = render(profile_values("gpu-triton", PVC, {"workers": {"pools": {"stable": pool}}}))
    gateway = one(objects, "Deployment", "rel-vlm-serve-gateway")
    assert "initContainers" not in pod_spec(gateway)
    data = one(objects, "ConfigMap", "rel-vlm-serve-chat-templates")["data"]
    assert data == {"stable.jinja": template}
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/chat-templates" in annotations
    # pvc mode: the engine loads the folder the download Job fills, at the pinned commit.
    model = json.loads(_model_repository(objects)["vllm_model/1/model.json"])
    assert model["model"] == f"/models/Qwen/Qwen3-VL-8B-Instruct/{BF16.revision}"
    assert "revision" not in model
    gateway_policy = one(objects, "NetworkPolicy", "rel-vlm-serve-gateway")
    assert {"protocol": "TCP", "port": 443} not in [
        p for rule in gateway_policy["spec"]["egress"] for p in rule["ports"]
    ]


def _refused(values: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(RenderRefused) as refused:
        render(values, **kwargs)
    return str(refused.value)


def test_triton_settings_are_refused_where_nothing_reads_them() -> None:
    def stable(**pool: Any) -> dict[str, Any]:
        return {"workers": {"pools": {"stable": pool}}}

    assert "the triton block is read only for Triton pools" in _refused(
        profile_values("gpu-bf16", stable(triton={"shareCache": True}))
    )
    assert "only NVIDIA's container (gpu-triton) reads model.json" in _refused(
        profile_values("dev-triton", stable(triton={"engineArgs": {"max_num_seqs": 4}}))
    )
    assert "reads no WORKER_* settings" in _refused(
        profile_values("gpu-triton", stable(env={"WORKER_MAX_NUM_SEQS": "64"}))
    )
    assert "engineArgs.model is the chart's to set" in _refused(
        profile_values("gpu-triton", stable(triton={"engineArgs": {"model": "x/y"}}))
    )
    # Offline storage: the gateway pods have no way to the checkpoint's template.
    message = _refused(profile_values("gpu-triton", PVC))
    assert "--set-file workers.pools.stable.triton.chatTemplate=" in message


def test_keda_scales_only_pools_whose_engine_exports_the_queue_gauge() -> None:
    keda = {"workers": {"keda": {"enabled": True}}}
    apis = (MONITORING_API, "keda.sh/v1alpha1")
    values = profile_values("canary-triton", keda)
    objects = render(values, api_versions=apis)
    # NVIDIA's official backend exports counters and histograms, no vllm:num_requests_waiting:
    # a ScaledObject on it would never scale. The canary keeps its replicas, NOTES says so.
    (scaled,) = find(objects, "ScaledObject")
    assert scaled["metadata"]["name"] == "rel-vlm-serve-worker-stable"
    assert "replicas" not in _worker(objects)["spec"]
    assert _worker(objects, "canary")["spec"]["replicas"] == 1
    assert "KEDA does not scale pool canary" in notes(values, api_versions=apis)
    # Our Triton model exports vLLM's waiting gauge: KEDA scales that pool.
    scaled = one(render(profile_values("dev-triton", keda), api_versions=apis), "ScaledObject")
    assert "vllm:num_requests_waiting" in scaled["spec"]["triggers"][0]["metadata"]["query"]


def test_gateways_and_prometheus_reach_tritons_metrics_port() -> None:
    objects = render(profile_values("canary-triton"))
    workers = one(objects, "NetworkPolicy", "rel-vlm-serve-workers")
    admitted = {p["port"] for p in workers["spec"]["ingress"][0]["ports"]}
    assert admitted == {8000, 8002}
    gateway = one(objects, "NetworkPolicy", "rel-vlm-serve-gateway")
    to_workers = next(r for r in gateway["spec"]["egress"] if "to" in r
                      and r["to"][0]["podSelector"]["matchLabels"].get(
                          "app.kubernetes.io/component") == "worker")  # fmt: skip
    assert {p["port"] for p in to_workers["ports"]} == {8000, 8002}
    # The init container reads chat templates from the hub.
    assert {"protocol": "TCP", "port": 443} in [
        p for rule in gateway["spec"]["egress"] for p in rule["ports"]
    ]
    # Without a Triton pool nothing more is open.
    plain = one(render(profile_values("gpu-bf16")), "NetworkPolicy", "rel-vlm-serve-workers")
    assert {p["port"] for p in plain["spec"]["ingress"][0]["ports"]} == {8000}


def test_prometheus_scrapes_each_worker_on_the_port_that_serves_its_metrics() -> None:
    """One ServiceMonitor: `http` on gateways and vLLM workers, `metrics` on Triton's own
    port, never Triton's API port (where /metrics is a 404 and the target would be down)."""
    objects = render(profile_values("canary-triton"), api_versions=(MONITORING_API,))
    monitor = one(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    scraped = {}
    for service in find(objects, "Service"):
        labels = service["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in selector.items()):
            names = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            scraped[service["metadata"]["name"]] = (
                labels[monitor["spec"]["jobLabel"]],
                {names[e] for e in endpoints if e in names},
            )
    assert scraped == {
        "rel-vlm-serve-gateway": ("gateway", {8000}),
        "rel-vlm-serve-worker-stable": ("vllm-worker", {8000}),
        "rel-vlm-serve-worker-canary": ("triton-worker", {8002}),
    }
    for endpoint in endpoints.values():
        relabel = endpoint["relabelings"][0]
        assert relabel["targetLabel"] == "pool"
