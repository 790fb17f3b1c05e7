"""The chart renders every values profile, and renders what each profile promises."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from gateway.config import Settings
from gateway.metrics import DEFAULT_POOL
from tests.support.helm import (
    AWQ_TEST_REVISION,
    DEV_PROFILES,
    KUBE_VERSIONS,
    MONITORING_API,
    PROFILES,
    RenderRefused,
    container,
    env_of,
    find,
    kinds,
    merge,
    notes,
    one,
    pod_spec,
    pods,
    profile_values,
    render,
)
from worker.profiles import PROFILES as WORKER_PROFILES
from worker.profiles import REPO_ROOT

GPU = ("gpu-bf16", "gpu-fp8", "gpu-awq")
KEDA_API = "keda.sh/v1alpha1"
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")
COMMON_KINDS = {
    "ConfigMap", "Deployment", "Job", "NetworkPolicy", "Pod", "Service", "ServiceAccount",
}  # fmt: skip


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_renders_for_two_kubernetes_versions(profile: str, kube_version: str) -> None:
    objects = render(profile_values(profile), kube_version=kube_version)
    present = set(kinds(objects))
    assert present >= COMMON_KINDS
    # Without the monitoring CRDs nothing of theirs is rendered.
    assert not present & {"ServiceMonitor", "PrometheusRule"}
    if profile in DEV_PROFILES:
        assert "Secret" in present  # the clearly marked dev credentials
        assert "HorizontalPodAutoscaler" not in present
    else:
        assert "Secret" not in present  # production: secrets by reference only
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= present
        # Weights on the nodes' disks: no claim a stock cluster's storage could leave Pending.
        assert "PersistentVolumeClaim" not in present


def test_kubernetes_older_than_the_charts_floor_is_refused() -> None:
    with pytest.raises(RenderRefused, match="kubeVersion"):
        render(profile_values("dev"), kube_version="v1.27.0")
    image = {"workers": {"modelStorage": {"mode": "image", "image": {"reference": "r/w:1"}}}}
    with pytest.raises(RenderRefused, match=r"Kubernetes >= 1\.31"):
        render(profile_values("gpu-bf16", image), kube_version="v1.30.0")


def test_monitoring_resources_need_both_the_switch_and_the_crds() -> None:
    with_crds = render(profile_values("gpu-bf16"), api_versions=(MONITORING_API,))
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds(with_crds))
    rule = one(with_crds, "PrometheusRule")
    assert rule["spec"]["groups"]
    assert all(g["rules"] for g in rule["spec"]["groups"])
    monitor = one(with_crds, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s for s in find(with_crds, "Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]  # fmt: skip
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped} == {
        "gateway",
        "worker",
    }
    switched_off = profile_values(
        "gpu-bf16",
        {
            "monitoring": {
                "serviceMonitor": {"enabled": False},
                "prometheusRule": {"enabled": False},
            }
        },
    )
    assert not {"ServiceMonitor", "PrometheusRule"} & set(
        kinds(render(switched_off, api_versions=(MONITORING_API,)))
    )
    # The CRD-absent install says what it left out.
    assert "no ServiceMonitor" in notes(profile_values("gpu-bf16"))


def test_schema_refuses_typos_and_unknown_profiles() -> None:
    with pytest.raises(RenderRefused, match="replicass"):
        render(profile_values("dev", {"gateway": {"replicass": 3}}))
    with pytest.raises(RenderRefused, match="profile"):
        render(profile_values("dev", {"workers": {"pools": {"stable": {"profile": "gpu-bf17"}}}}))
    with pytest.raises(RenderRefused, match="WORKER_"):
        render(profile_values("dev", {"workers": {"pools": {"stable": {"env": {"MAX": "1"}}}}}))


def test_the_charts_profile_table_matches_the_workers_profiles() -> None:
    for name in ("gpu-bf16", "gpu-fp8", "gpu-awq", "cpu-tiny"):
        values = profile_values("gpu-bf16", {"workers": {"pools": {"stable": {"profile": name}}}})
        pinned = {"workers": {"pools": {"stable": {"revision": AWQ_TEST_REVISION}}}}
        objects = render(values if WORKER_PROFILES[name].revision else merge(values, pinned))
        worker = container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"))
        assert f"--profile={name}" in worker["args"]
        if name != "cpu-tiny":
            # hub mode: the profile's own checkpoint at the commit both pin.
            assert "WORKER_MODEL" not in env_of(worker)
            revision = WORKER_PROFILES[name].revision or AWQ_TEST_REVISION
            assert env_of(worker)["WORKER_REVISION"] == revision
        smoke = container(one(objects, "Pod"))
        assert f"--model={WORKER_PROFILES[name].served_model_name}" in smoke["args"]
        tag = one(objects, "Deployment", "rel-vlm-serve-worker-stable")
        image = container(tag)["image"]
        precision = {"gpu-bf16": "bf16", "gpu-fp8": "fp8", "gpu-awq": "awq", "cpu-tiny": "cpu"}
        assert image.endswith(f"-{precision[name]}"), image
        assert ("worker-gpu" in image) == (name != "cpu-tiny")


def _gateway_drain(objects: list[dict[str, Any]]) -> tuple[list[float], int]:
    """The gateway's rendered (preStop, drain delay, graceful timeout, log close timeout)
    and its termination grace period."""
    deployment = one(objects, "Deployment", "rel-vlm-serve-gateway")
    gateway = container(deployment)
    preStop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert preStop[0] == "sleep"
    args = dict(a.removeprefix("--").split("=", 1) for a in gateway["args"] if "=" in a)
    timeouts = [
        float(preStop[1]),
        float(args["drain-delay"]),
        float(args["graceful-timeout"]),
        float(env_of(gateway)["GATEWAY_LOG_CLOSE_TIMEOUT_S"]),
    ]
    return timeouts, pod_spec(deployment)["terminationGracePeriodSeconds"]


def test_gateway_drain_probes_and_arguments_come_from_the_values() -> None:
    values = profile_values("gpu-bf16")
    assert not values.get("gateway", {}).get("drain")  # the profile keeps the defaults
    objects = render(values)
    timeouts, grace = _gateway_drain(objects)
    assert grace >= sum(timeouts)
    # Values unlike any default each reach their own place in the pod.
    drain = {
        "preStopSeconds": 7,
        "drainDelaySeconds": 11,
        "gracefulTimeoutSeconds": 23,
        "logCloseTimeoutSeconds": 13,
    }
    custom = {"gateway": {"drain": drain, "terminationGracePeriodSeconds": 97}}
    assert _gateway_drain(render(profile_values("gpu-bf16", custom))) == ([7, 11, 23, 13], 97)
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    env = env_of(gateway)
    assert gateway["args"][:3] == ["python3", "-m", "gateway"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env["GATEWAY_WORKER_URLS"] == ""
    assert env["GATEWAY_WORKER_DNS"] == (
        "http://rel-vlm-serve-worker-stable.vlm.svc.cluster.local:8000"
    )
    # The name the gateway resolves is the headless Service the chart renders.
    service = one(objects, "Service", "rel-vlm-serve-worker-stable")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False


@pytest.mark.parametrize("profile", ["dev", *GPU])
def test_worker_probes_follow_the_profiles_startup_budget(profile: str) -> None:
    objects = render(profile_values(profile))
    deployment = one(objects, "Deployment", "rel-vlm-serve-worker-stable")
    worker = container(deployment, "worker")
    args = dict(a.removeprefix("--").split("=", 1) for a in worker["args"] if "=" in a)
    budget = float(args["startup-timeout"])
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    # Liveness cannot kill a worker still loading its model within the budget...
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget
    # ...and a GPU model load gets minutes, the tiny CPU model less.
    assert budget >= (900 if profile in GPU else 120)
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    # Ready only after the launcher's warm-up answer.
    assert worker["readinessProbe"]["exec"]["command"][:4] == ["python3", "-m", "worker", "ready"]
    assert env_of(worker)["WORKER_READY_FILE"].startswith("/tmp/")
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    pre_stop = int(worker["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace >= pre_stop + int(env_of(worker)["WORKER_SHUTDOWN_TIMEOUT_S"])


def _refused(values: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(RenderRefused) as refused:
        render(values, **kwargs)
    return str(refused.value)


def test_refuses_a_gateway_grace_period_shorter_than_its_drain() -> None:
    drain = {"preStopSeconds": 5, "drainDelaySeconds": 5, "gracefulTimeoutSeconds": 30,
             "logCloseTimeoutSeconds": 10}  # fmt: skip
    short = {"gateway": {"drain": drain, "terminationGracePeriodSeconds": 49}}
    message = _refused(profile_values("gpu-bf16", short))
    assert "gateway.terminationGracePeriodSeconds (49)" in message
    assert "5 + 5 + 30 + 10 = 50" in message
    exact = {"gateway": {"drain": drain, "terminationGracePeriodSeconds": 50}}
    assert find(render(profile_values("gpu-bf16", exact)), "Deployment", "rel-vlm-serve-gateway")


def test_refuses_a_worker_grace_period_shorter_than_its_drain() -> None:
    values = profile_values("gpu-bf16", {"workers": {"terminationGracePeriodSeconds": 30}})
    assert "workers.terminationGracePeriodSeconds (30)" in _refused(values)


def test_refuses_a_worker_prestop_shorter_than_the_gateways_notice() -> None:
    values = profile_values("gpu-bf16", {"workers": {"drain": {"preStopSeconds": 3}}})
    assert "gateways would still send new requests" in _refused(values)


def test_refuses_a_readwriteonce_volume_shared_by_several_workers() -> None:
    rwo = {"workers": {"modelStorage": {"mode": "pvc", "pvc": {"accessModes": ["ReadWriteOnce"]}}}}
    # gpu-bf16 runs two stable replicas.
    assert "cannot be shared by 2 worker pods" in _refused(profile_values("gpu-bf16", rwo))
    # One replica may keep a ReadWriteOnce volume to itself.
    single = {"workers": {"pools": {"stable": {"replicas": 1}}}}
    assert find(render(profile_values("gpu-bf16", rwo, single)), "PersistentVolumeClaim")
    # ...but not once a canary pool mounts it too, or KEDA may add replicas.
    assert "by 2 worker pods" in _refused(profile_values("canary", rwo, single))
    keda = {"workers": {"keda": {"enabled": True, "maxReplicas": 3}}}
    assert "by 3 worker pods" in _refused(profile_values("gpu-bf16", rwo, single, keda))
    claim = {"workers": {"modelStorage": {"mode": "existingClaim",
             "existingClaim": {"name": "weights", "accessModes": ["ReadWriteOnce"]}}}}  # fmt: skip
    assert "ReadWriteOnce volume cannot be shared" in _refused(profile_values("gpu-bf16", claim))


def test_refuses_an_install_without_a_database_reference() -> None:
    values = profile_values("gpu-bf16", {"database": {"existingSecret": ""}})
    assert "database.existingSecret is required" in _refused(values)


@pytest.mark.parametrize("mode", ["hub", "pvc", "existingClaim", "hostPath", "image"])
def test_model_storage_modes(mode: str) -> None:
    storage: dict[str, Any] = {"mode": mode}
    if mode == "existingClaim":
        storage["existingClaim"] = {"name": "qwen-weights"}
    if mode == "pvc":
        storage["pvc"] = {"storageClassName": "efs-sc"}
    if mode == "image":
        storage["image"] = {"reference": "registry.example.com/qwen3-vl-8b-weights:1"}
    # Image volumes exist from Kubernetes 1.31.
    objects = render(
        profile_values("gpu-bf16", {"workers": {"modelStorage": storage}}),
        kube_version="v1.33.0",
    )
    deployment = one(objects, "Deployment", "rel-vlm-serve-worker-stable")
    env = env_of(container(deployment, "worker"))
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    offline = mode in ("pvc", "existingClaim", "image")
    assert (env.get("HF_HUB_OFFLINE") == "1") == offline
    revision = WORKER_PROFILES["gpu-bf16"].revision
    if offline:
        # pvc: the folder the chart's Job fills, one per pinned commit.
        folder = f"/{revision}" if mode == "pvc" else ""
        assert env["WORKER_MODEL"] == f"/models/Qwen/Qwen3-VL-8B-Instruct{folder}"
        assert env["WORKER_REVISION"] == ""  # a local folder has no commit to resolve
    else:
        assert env["WORKER_REVISION"] == revision
    assert ("models" in volumes) == (mode != "hub")
    downloads = [j for j in find(objects, "Job") if "models-" in j["metadata"]["name"]]
    assert bool(downloads) == (mode == "pvc")
    if mode == "pvc":
        claim = one(objects, "PersistentVolumeClaim")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"]["storageClassName"] == "efs-sc"
        script = container(downloads[0])["args"][0].replace("'", "")
        assert f"hf download Qwen/Qwen3-VL-8B-Instruct --revision {revision}" in script
        waits = pod_spec(deployment)["initContainers"][0]["command"][-1]
        assert f"/models/Qwen/Qwen3-VL-8B-Instruct/{revision}/.complete" in waits
    if mode == "existingClaim":
        assert volumes["models"]["persistentVolumeClaim"] == {
            "claimName": "qwen-weights",
            "readOnly": True,
        }
    if mode == "hostPath":
        assert volumes["models"]["hostPath"]["path"] == "/var/lib/vlm-serve/models"
        assert env["HF_HOME"] == "/models/hf"
    if mode == "image":
        assert volumes["models"]["image"]["reference"].endswith("weights:1")


def test_migrations_run_before_gateways_under_helm_and_argo_cd() -> None:
    job = one(render(profile_values("gpu-bf16")), "Job", "rel-vlm-serve-migrate")
    notes_ = job["metadata"]["annotations"]
    assert notes_["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert notes_["argocd.argoproj.io/hook"] == "PreSync"
    assert int(notes_["argocd.argoproj.io/sync-wave"]) < 0
    assert container(job)["command"] == ["python3", "-m", "gateway.interactions", "migrate"]
    # The bundled dev database does not exist before install: a plain Job there.
    dev_jobs = [j for j in render(profile_values("dev")) if j["kind"] == "Job"]
    assert [j["metadata"].get("annotations", {}).get("helm.sh/hook") for j in dev_jobs] == [None]


def test_secrets_only_by_reference_in_production_profiles() -> None:
    for profile in (*GPU, "canary", "gpu-triton", "canary-triton"):
        objects = render(profile_values(profile))
        for obj in pods(objects):
            for cont in pod_spec(obj)["containers"] + pod_spec(obj).get("initContainers", []):
                for name, value in env_of(cont).items():
                    if any(word in name for word in ("DATABASE_URL", "REDIS_URL", "API_KEY")):
                        assert isinstance(value, dict), (name, value)
                        assert "secretKeyRef" in value, (name, value)


def test_every_pod_runs_non_root_read_only_without_capabilities() -> None:
    for profile in PROFILES:
        for obj in pods(render(profile_values(profile, {"nginx": {"enabled": True}}))):
            spec = pod_spec(obj)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert spec["automountServiceAccountToken"] is False
            for cont in spec["containers"] + spec.get("initContainers", []):
                context = cont["securityContext"]
                assert context["readOnlyRootFilesystem"] is True
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]


def test_network_policies_let_only_gateways_reach_workers() -> None:
    objects = render(profile_values("gpu-bf16"))
    workers = one(objects, "NetworkPolicy", "rel-vlm-serve-workers")
    sources = workers["spec"]["ingress"][0]["from"]
    pod_sources = [s["podSelector"]["matchLabels"] for s in sources if "podSelector" in s]
    assert [s["app.kubernetes.io/component"] for s in pod_sources] == ["gateway"]
    # Everything else may only be Prometheus' namespace.
    assert all("namespaceSelector" in s for s in sources if "podSelector" not in s)
    gateway = one(objects, "NetworkPolicy", "rel-vlm-serve-gateway")
    assert set(gateway["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_canary_pools_have_weights_and_their_own_services() -> None:
    objects = render(profile_values("canary"))
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    pools = json.loads(env_of(gateway)["GATEWAY_WORKER_POOLS"])
    assert {p["name"]: p["weight"] for p in pools} == {"stable": 95, "canary": 5}
    for pool in pools:
        service = f"rel-vlm-serve-worker-{pool['name']}"
        assert pool["dns"] == [f"http://{service}.vlm.svc.cluster.local:8000"]
        assert (
            one(objects, "Service", service)["spec"]["selector"]["vlm-serve.io/pool"]
            == (pool["name"])
        )
    canary = container(one(objects, "Deployment", "rel-vlm-serve-worker-canary"))
    assert "--profile=gpu-fp8" in canary["args"]
    assert canary["image"].endswith("-qwen3vl8b-fp8")
    assert "GATEWAY_WORKER_DNS" not in env_of(gateway)
    # With two checkpoints a repeated test request may meet the other one's cache.
    assert "--pools=2" in container(one(objects, "Pod"))["args"]


def test_helm_test_pod_sends_a_real_request() -> None:
    objects = render(profile_values("dev"))
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test = container(pod)
    assert test["command"] == ["python3", "/smoke/smoke_test.py"]
    assert "--url=http://rel-vlm-serve-gateway.vlm.svc.cluster.local:8000" in test["args"]
    assert "--create-key" in test["args"]
    script = one(objects, "ConfigMap", "rel-vlm-serve-smoke-test")["data"]["smoke_test.py"]
    assert "X-Cache" in script
    # Gateways are ready without workers; the test waits for one that has a worker.
    assert 'READY_PATH = "/readyz?min_workers=1"' in script
    # Through Nginx when the chart runs it.
    with_nginx = render(profile_values("dev", {"nginx": {"enabled": True}}))
    assert (
        "--url=http://rel-vlm-serve-nginx.vlm.svc.cluster.local:80"
        in container(one(with_nginx, "Pod"))["args"]
    )


def test_nginx_ingress_and_httproute_point_at_the_front() -> None:
    values = profile_values(
        "gpu-bf16",
        {"nginx": {"enabled": True}, "ingress": {"enabled": True},
         "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]}},
    )  # fmt: skip
    objects = render(values)
    conf = one(objects, "ConfigMap", "rel-vlm-serve-nginx")["data"]["nginx.conf"]
    body = conf.split("\n", 3)[3]  # below the template's own header comment
    assert "${" not in body  # every placeholder filled in
    assert "server rel-vlm-serve-gateway.vlm.svc.cluster.local:8000" in conf
    assert "client_max_body_size 16777216;" in conf
    assert "proxy_read_timeout 610s;" in conf
    backend = one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "rel-vlm-serve-nginx", "port": {"number": 80}}
    route = one(objects, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "rel-vlm-serve-nginx"


def test_keda_renders_only_a_scaler_that_can_read_its_metric_and_wake() -> None:
    keda = {"workers": {"keda": {"enabled": True}}}
    both = (MONITORING_API, KEDA_API)
    # At zero replicas the workers' own series is gone: nothing would wake the pool.
    zero = {"workers": {"keda": {"enabled": True, "minReplicas": 0}}}
    assert "minReplicas must be at least 1" in _refused(
        profile_values("gpu-bf16", zero), api_versions=both
    )
    # Nothing scrapes the workers without the Prometheus Operator or with the monitor off.
    assert "nothing scrapes" in _refused(profile_values("gpu-bf16", keda), api_versions=(KEDA_API,))
    off = {"monitoring": {"serviceMonitor": {"enabled": False}}}
    assert "nothing scrapes" in _refused(profile_values("gpu-bf16", keda, off), api_versions=both)
    assert "needs KEDA installed" in _refused(
        profile_values("gpu-bf16", keda), api_versions=(MONITORING_API,)
    )
    # The query reads a series of the very Service the ServiceMonitor scrapes.
    objects = render(profile_values("gpu-bf16", keda), api_versions=both)
    scaled, monitor = one(objects, "ScaledObject"), one(objects, "ServiceMonitor")
    assert scaled["spec"]["minReplicaCount"] >= 1
    service = one(objects, "Service", "rel-vlm-serve-worker-stable")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert f'service="{service["metadata"]["name"]}"' in query


def test_gpus_set_tensor_parallelism_and_no_override_drops_them() -> None:
    two = {"workers": {"pools": {"stable": {"gpus": 2}}}}
    deployment = one(render(profile_values("gpu-bf16", two)), "Deployment",
                     "rel-vlm-serve-worker-stable")  # fmt: skip
    worker = container(deployment, "worker")
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {k: v for k, v in env_of(worker).items() if isinstance(v, str)}
    assert env["WORKER_TENSOR_PARALLEL_SIZE"] == "2"
    # The launcher turns the rendered environment into vLLM's argument.
    printed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *worker["args"][4:]], cwd=REPO_ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    command = json.loads(printed)["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    # A GPU profile without a GPU is refused, as is an override that contradicts gpus.
    assert "needs at least one GPU" in _refused(
        profile_values("gpu-bf16", {"workers": {"pools": {"stable": {"gpus": 0}}}})
    )
    wrong = {"limits": {"nvidia.com/gpu": 2}}
    assert "set the GPU count with gpus only" in _refused(
        profile_values("gpu-bf16", {"workers": {"pools": {"stable": {"resources": wrong}}}})
    )
    tp = {"env": {"WORKER_TENSOR_PARALLEL_SIZE": "4"}}
    assert "differs from gpus" in _refused(
        profile_values("gpu-bf16", {"workers": {"pools": {"stable": tp}}})
    )
    # cpu and memory from an override; the GPU stays.
    mine = {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "40Gi"}}
    override = {"workers": {"pools": {"stable": {"resources": mine}}}}
    worker = container(one(render(profile_values("gpu-bf16", override)), "Deployment",
                           "rel-vlm-serve-worker-stable"), "worker")  # fmt: skip
    resources = worker["resources"]
    assert resources["requests"]["cpu"] == "4"
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_each_pool_takes_its_own_scheduling() -> None:
    term = {"matchExpressions": [
        {"key": "nvidia.com/mig.config", "operator": "In", "values": ["all-3g.40gb"]}]}  # fmt: skip
    mig = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}  # fmt: skip
    canary = {"priorityClassName": "gpu-canary", "runtimeClassName": "nvidia", "affinity": mig}
    objects = render(profile_values("canary", {"workers": {"pools": {"canary": canary}}}))
    spec = pod_spec(one(objects, "Deployment", "rel-vlm-serve-worker-canary"))
    assert spec["priorityClassName"] == "gpu-canary"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["affinity"] == mig
    stable = pod_spec(one(objects, "Deployment", "rel-vlm-serve-worker-stable"))
    assert not {"priorityClassName", "runtimeClassName", "affinity"} & set(stable)


def test_keda_scales_each_pool_on_waiting_requests() -> None:
    values = profile_values("canary", {"workers": {"keda": {"enabled": True}}})
    objects = render(values, api_versions=(MONITORING_API, KEDA_API))
    scaled = find(objects, "ScaledObject")
    assert sorted(s["metadata"]["name"] for s in scaled) == [
        "rel-vlm-serve-worker-canary",
        "rel-vlm-serve-worker-stable",
    ]
    for obj in scaled:
        assert "vllm:num_requests_waiting" in obj["spec"]["triggers"][0]["metadata"]["query"]
    # KEDA owns the replica count then.
    assert all("replicas" not in d["spec"] for d in find(objects, "Deployment")
               if "worker" in d["metadata"]["name"])  # fmt: skip


@pytest.mark.parametrize("profile", ["dev", "gpu-bf16", "canary"])
def test_the_gateway_accepts_the_rendered_environment(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered GATEWAY_* values pass the gateway's own start-up validation."""
    gateway = container(one(render(profile_values(profile)), "Deployment", "rel-vlm-serve-gateway"))
    for name, value in env_of(gateway).items():
        if isinstance(value, str):  # Secret references are checked elsewhere
            monkeypatch.setenv(name, value)
    pools = {p.name: (p.weight, p.dns) for p in Settings().pools()}
    dns = "http://rel-vlm-serve-worker-{}.vlm.svc.cluster.local:8000"
    if profile == "canary":
        assert pools == {"stable": (95, (dns.format("stable"),)),
                         "canary": (5, (dns.format("canary"),))}  # fmt: skip
    else:
        assert pools == {DEFAULT_POOL: (1, (dns.format("stable"),))}


def test_a_redis_cluster_is_a_value() -> None:
    def gateway_settings(values: dict[str, Any]) -> Settings:
        gateway = container(one(render(values), "Deployment", "rel-vlm-serve-gateway"))
        env = {k: v for k, v in env_of(gateway).items() if k.startswith("GATEWAY_REDIS")}
        url = env.pop("GATEWAY_REDIS_URL")
        assert isinstance(url, dict)  # a Secret reference: not rendered into the manifest
        return Settings.model_validate({k.removeprefix("GATEWAY_").lower(): v
                                        for k, v in env.items()})  # fmt: skip

    assert not gateway_settings(profile_values("gpu-bf16")).redis_cluster
    cluster = profile_values("gpu-bf16", {"redis": {"cluster": True}})
    assert gateway_settings(cluster).redis_cluster
    with pytest.raises(RenderRefused):
        render(profile_values("gpu-bf16", {"redis": {"cluster": "yes"}}))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_our_long_running_containers_keep_the_images_init(profile: str) -> None:
    """Our images start python under tini (their ENTRYPOINT): a `command` in the chart would
    replace it, leaving python as PID 1, where the engine and parser processes it starts are
    never reaped and a crash orphans them. Our containers give arguments only."""
    objects = render(profile_values(profile))
    ours = 0
    for obj in pods(objects):
        if obj["kind"] in ("Job", "Pod"):
            continue  # run-to-completion: nothing outlives them
        for cont in pod_spec(obj)["containers"]:
            if not cont["image"].startswith("ghcr.io/vlm-serve/"):
                continue
            ours += 1
            assert "command" not in cont, (obj["metadata"]["name"], cont["command"])
            assert cont["args"][:2] == ["python3", "-m"], (obj["metadata"]["name"], cont["args"])
    assert ours, "every profile runs our gateway image"
