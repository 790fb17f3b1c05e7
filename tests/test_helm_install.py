"""The first install on a stock managed cluster: Helm's and Argo CD's install order replayed
over the rendered objects of every profile, the model storage a stock cluster can provide,
a deadline on every wait, pinned revisions and the Hugging Face token by reference.

No cluster runs here: the order is Helm's own (hooks by weight then name, each hook pod
waited for; hook-succeeded hooks deleted once the phase succeeds; then the release's
objects; `helm test` hooks last) and Argo CD's (PreSync, Sync, PostSync; waves, then kind),
replayed over what the chart renders. The scripts the chart renders (the workers' wait for
their weights, the download Job) run here under `sh`.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import (
    AWQ_TEST_REVISION,
    DEV_PROFILES,
    PROFILES,
    Manifest,
    RenderRefused,
    container,
    env_of,
    find,
    merge,
    notes,
    one,
    pod_spec,
    profile_values,
    render,
)
from worker.profiles import PROFILES as WORKER_PROFILES
from worker.profiles import REPO_ROOT

DOCS = (REPO_ROOT / "docs" / "KUBERNETES.md").read_text()
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")
BF16_REVISION = WORKER_PROFILES["gpu-bf16"].revision
# Helm's install order of kinds (pkg/release/util/kind_sorter.go), as far as the chart uses them.
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap",
    "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition",
    "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]  # fmt: skip
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
# The names docs/KUBERNETES.md uses for what a user creates first; the variants use them.
USER_OBJECTS: dict[str, dict[str, Any]] = {
    "hf-token": {
        "workers": {"modelStorage": {"hfToken": {"existingSecret": "vlm-serve-hf-token"}}}
    },
    "pull-secret": {"image": {"pullSecrets": ["regcred"]}},
    "own-service-account": {"serviceAccount": {"create": False, "name": "vlm-serve-runner"}},
    "existing-claim": {"workers": {"modelStorage": {
        "mode": "existingClaim", "existingClaim": {"name": "qwen-weights"}}}},
}  # fmt: skip
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "front doors": {
        "nginx": {"enabled": True, "service": {"type": "LoadBalancer"}},
        "ingress": {"enabled": True, "className": "nginx"},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
    },
    "pvc": {"workers": {"modelStorage": {"mode": "pvc", "pvc": {"storageClassName": "efs-sc"}}}},
    "hub volume": {"workers": {"modelStorage": {"hub": {"volume": "ephemeral"}}}},
    "hostPath": {"workers": {"modelStorage": {"mode": "hostPath"}}},
    **USER_OBJECTS,
}

Ref = tuple[str, str]  # (kind, name)


def _annotations(obj: Manifest) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def _key(obj: Manifest) -> Ref:
    return obj["kind"], obj["metadata"]["name"]


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def refs(obj: Manifest) -> Iterator[Ref]:
    """What a pod of ``obj`` needs to exist before Kubernetes starts it."""
    spec = pod_spec(obj) if obj["kind"] != "CronJob" else obj["spec"]["jobTemplate"]["spec"]
    yield "ServiceAccount", spec.get("serviceAccountName") or "default"
    for secret in spec.get("imagePullSecrets", []):
        yield "Secret", secret["name"]
    for volume in spec.get("volumes", []):
        if "configMap" in volume and not volume["configMap"].get("optional"):
            yield "ConfigMap", volume["configMap"]["name"]
        if "secret" in volume and not volume["secret"].get("optional"):
            yield "Secret", volume["secret"]["secretName"]
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
    for cont in spec["containers"] + spec.get("initContainers", []):
        for value in env_of(cont).values():
            if isinstance(value, dict):
                for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if ref in value and not value[ref].get("optional"):
                        yield kind, value[ref]["name"]
        for source in cont.get("envFrom", []):
            for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref in source and not source[ref].get("optional"):
                    yield kind, source[ref]["name"]


def _start(obj: Manifest, available: set[Ref], when: str, missing: list[str]) -> None:
    if obj["kind"] in POD_KINDS:
        for ref in refs(obj):
            if ref not in available:
                missing.append(f"{when}: {'/'.join(_key(obj))} needs {'/'.join(ref)}")


def replay_helm(objects: list[Manifest]) -> list[str]:
    """`helm install`, `helm upgrade` and `helm test`: each object a pod needs that is not
    there yet when the pod is created ("phase: Kind/name needs Kind/name")."""
    missing: list[str] = []
    hooks = [o for o in objects if "helm.sh/hook" in _annotations(o)]
    release = [o for o in objects if o not in hooks]

    def events(obj: Manifest) -> set[str]:
        return {e.strip() for e in _annotations(obj)["helm.sh/hook"].split(",")}

    def run_hooks(event: str, available: set[Ref]) -> None:
        phase = sorted(
            (h for h in hooks if event in events(h)),
            key=lambda h: (int(_annotations(h).get("helm.sh/hook-weight", "0")), _key(h)[1]),
        )
        for hook in phase:  # one at a time, each waited for
            _start(hook, available, event, missing)
            available.add(_key(hook))
        for hook in phase:  # deleted only once the whole phase succeeded
            if "hook-succeeded" in _annotations(hook).get("helm.sh/hook-delete-policy", ""):
                available.discard(_key(hook))

    # install: nothing of the release exists yet (the namespace's default account does)
    available: set[Ref] = {("ServiceAccount", "default")}
    run_hooks("pre-install", available)
    available |= {_key(o) for o in release}
    for obj in release:
        _start(obj, available, "install", missing)
    run_hooks("post-install", available)
    run_hooks("test", available)
    # upgrade: the previous revision's objects are there
    available = {("ServiceAccount", "default"), *(_key(o) for o in release)}
    run_hooks("pre-upgrade", available)
    return missing


def replay_argo_cd(objects: list[Manifest]) -> list[str]:
    """An Argo CD sync: PreSync, Sync, PostSync hooks in order of wave, then kind; Helm
    hooks it maps (pre-install: PreSync), `helm test` hooks skipped."""
    helm_to_argo = {"pre-install": "PreSync", "pre-upgrade": "PreSync", "post-install": "PostSync"}

    def phase(obj: Manifest) -> str | None:
        notes_ = _annotations(obj)
        if "argocd.argoproj.io/hook" in notes_:
            return notes_["argocd.argoproj.io/hook"]
        if "helm.sh/hook" in notes_:
            first = notes_["helm.sh/hook"].split(",")[0].strip()
            return helm_to_argo.get(first)
        return "Sync"

    order = {"PreSync": 0, "Sync": 1, "PostSync": 2}
    synced = sorted(
        (o for o in objects if phase(o) in order),
        key=lambda o: (
            order[str(phase(o))],
            int(_annotations(o).get("argocd.argoproj.io/sync-wave", "0")),
            _kind_rank(o["kind"]),
            _key(o)[1],
        ),
    )
    missing: list[str] = []
    available: set[Ref] = {("ServiceAccount", "default")}
    for obj in synced:
        available.add(_key(obj))
        _start(obj, available, f"Argo CD {phase(obj)}", missing)
    return missing


def _mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text) is not None


# The tiny models are in their images: the chart refuses modes that would mount a folder.
IMAGE_MODEL_ONLY = {(p, v) for p in DEV_PROFILES for v in ("pvc", "existing-claim")}
# Where the gateway pods cannot read a Triton pool's checkpoint from the hub, the user
# gives its chat template (helm --set-file); the chart refuses the install otherwise.
OFFLINE_VARIANTS = ("pvc", "existing-claim")
TRITON_POOLS = {"gpu-triton": "stable", "canary-triton": "canary"}


def _renders() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for profile in sorted(PROFILES):
        for variant, extra in VARIANTS.items():
            if (profile, variant) in IMAGE_MODEL_ONLY:
                continue
            template: dict[str, Any] = {}
            if profile in TRITON_POOLS and variant in OFFLINE_VARIANTS:
                pool = {"triton": {"chatTemplate": "{{ messages }}"}}
                template = {"workers": {"pools": {TRITON_POOLS[profile]: pool}}}
            yield profile, variant, profile_values(profile, extra, template)


@pytest.mark.parametrize("tool", ["helm", "argo-cd"])
def test_install_order_every_object_a_pod_needs_exists_before_it(tool: str) -> None:
    """The first install of every profile: no hook pod waits for an object Helm (or Argo
    CD) creates only after it; what the release does not create, the user does, and NOTES
    and docs/KUBERNETES.md name it."""
    problems = []
    for profile, variant, values in _renders():
        objects = render(values)
        replay = replay_helm if tool == "helm" else replay_argo_cd
        text = notes(values)
        for line in replay(objects):
            needed = line.rsplit(" needs ", 1)[1].split("/", 1)[1]
            # Made by the chart, but too late; or the user's, and then named in both.
            if any(needed == o["metadata"]["name"] for o in objects) or not (
                _mentioned(needed, text) and _mentioned(needed, DOCS)
            ):
                problems.append(f"{profile} ({variant}) {line}")
    assert not problems, "\n".join(problems)


def test_the_replay_catches_a_hook_that_needs_a_release_object() -> None:
    """The replay itself: today's migrations hook under the release's ServiceAccount."""
    objects = render(profile_values("gpu-bf16"))
    job = one(objects, "Job", "rel-vlm-serve-migrate")
    pod_spec(job)["serviceAccountName"] = "rel-vlm-serve"
    job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = "-1"
    assert _chart_made(replay_helm(objects)) == [
        "pre-install: Job/rel-vlm-serve-migrate needs ServiceAccount/rel-vlm-serve"
    ]
    assert _chart_made(replay_argo_cd(objects)) == [
        "Argo CD PreSync: Job/rel-vlm-serve-migrate needs ServiceAccount/rel-vlm-serve"
    ]
    # ...and an Argo CD wave that waits for a Job whose claim comes in a later wave.
    pvc = {"workers": {"modelStorage": {"mode": "pvc", "pvc": {"storageClassName": "efs-sc"}}}}
    objects = render(profile_values("gpu-bf16", pvc))
    job = next(j for j in find(objects, "Job") if "models-" in j["metadata"]["name"])
    job["metadata"]["annotations"] = {"argocd.argoproj.io/sync-wave": "-2"}
    assert f"Argo CD Sync: Job/{job['metadata']['name']} needs PersistentVolumeClaim/" in "\n".join(
        replay_argo_cd(objects)
    )
    assert not _chart_made(replay_helm(objects))


def _chart_made(lines: list[str]) -> list[str]:
    return [line for line in lines if line.split(" needs ", 1)[1].split("/")[1].startswith("rel-")]


def test_the_migrations_hook_has_its_own_service_account_created_first() -> None:
    objects = render(profile_values("gpu-bf16"))
    job = one(objects, "Job", "rel-vlm-serve-migrate")
    account = one(objects, "ServiceAccount", pod_spec(job)["serviceAccountName"])
    job_notes, account_notes = _annotations(job), _annotations(account)
    assert account_notes["helm.sh/hook"] == job_notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(account_notes["helm.sh/hook-weight"]) < int(job_notes["helm.sh/hook-weight"])
    assert account_notes["argocd.argoproj.io/hook"] == "PreSync"
    assert int(account_notes["argocd.argoproj.io/sync-wave"]) < int(
        job_notes["argocd.argoproj.io/sync-wave"]
    )
    assert account["automountServiceAccountToken"] is False
    # With a ServiceAccount of the user's, that one (it exists before the install).
    own = render(profile_values("gpu-bf16", USER_OBJECTS["own-service-account"]))
    assert pod_spec(one(own, "Job", "rel-vlm-serve-migrate"))["serviceAccountName"] == (
        "vlm-serve-runner"
    )
    assert not find(own, "ServiceAccount")


@pytest.mark.parametrize(
    "profile", ["gpu-bf16", "gpu-fp8", "gpu-awq", "canary", "gpu-triton", "canary-triton"]
)
def test_the_default_storage_needs_nothing_a_stock_cluster_lacks(profile: str) -> None:
    """EKS, GKE and AKS default classes are block storage (and new EKS clusters have no
    default class): the default renders no claim at all; each worker downloads onto its
    node's disk and requests the room as ephemeral-storage."""
    objects = render(profile_values(profile))
    assert not find(objects, "PersistentVolumeClaim")
    for deployment in find(objects, "Deployment"):
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
            continue
        spec = pod_spec(deployment)
        assert all("persistentVolumeClaim" not in v and "ephemeral" not in v
                   for v in spec["volumes"])  # fmt: skip
        cache = next(v for v in spec["volumes"] if v["name"] == "cache")["emptyDir"]
        worker = container(deployment, "worker")
        requested = worker["resources"]["requests"]["ephemeral-storage"]
        assert requested == cache["sizeLimit"]
        assert int(requested.removesuffix("Gi")) >= 16  # the weights and then some


def test_a_volume_per_worker_from_a_storage_class_is_one_switch_away() -> None:
    hub = {"workers": {"modelStorage": {"hub": {"volume": "ephemeral", "storageClassName": "gp3"}}}}
    objects = render(profile_values("gpu-bf16", hub))
    spec = pod_spec(one(objects, "Deployment", "rel-vlm-serve-worker-stable"))
    claim = next(v for v in spec["volumes"] if v["name"] == "cache")["ephemeral"]
    template = claim["volumeClaimTemplate"]["spec"]
    assert template["accessModes"] == ["ReadWriteOnce"]  # what every block class offers
    assert template["storageClassName"] == "gp3"
    assert template["resources"]["requests"]["storage"] == "40Gi"
    worker = container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"), "worker")
    assert "ephemeral-storage" not in worker["resources"]["requests"]


def test_a_readwritemany_claim_is_refused_without_a_class_that_offers_it() -> None:
    pvc = {"workers": {"modelStorage": {"mode": "pvc"}}}
    with pytest.raises(RenderRefused) as refused:
        render(profile_values("gpu-bf16", pvc))
    message = str(refused.value)
    assert "workers.modelStorage.pvc.storageClassName is required" in message
    assert all(name in message for name in ("efs-sc", "standard-rwx", "azurefile-csi"))
    named = {"workers": {"modelStorage": {"mode": "pvc", "pvc": {"storageClassName": "efs-sc"}}}}
    claim = one(render(profile_values("gpu-bf16", named)), "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "efs-sc"


def _pvc_render(**extra: Any) -> list[Manifest]:
    storage = {"mode": "pvc", "pvc": {"storageClassName": "efs-sc", **extra}}
    return render(profile_values("canary", {"workers": {"modelStorage": storage}}))


def _run_script(
    script: str, mount: Path, timeout_s: float, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{path}:{os.environ['PATH']}" if path else os.environ["PATH"]}
    return subprocess.run(
        ["sh", "-c", script.replace("/models/", f"{mount}/")], capture_output=True, text=True,
        timeout=timeout_s, env=env, check=False,
    )  # fmt: skip


def test_the_workers_wait_for_their_weights_has_a_deadline_and_says_why(tmp_path: Path) -> None:
    objects = _pvc_render(waitSeconds=2)
    deployment = one(objects, "Deployment", "rel-vlm-serve-worker-stable")
    wait = pod_spec(deployment)["initContainers"][0]
    assert wait["terminationMessagePolicy"] == "FallbackToLogsOnError"
    script = wait["command"][-1]
    started = time.monotonic()
    done = _run_script(script, tmp_path, timeout_s=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    assert f"Qwen/Qwen3-VL-8B-Instruct@{BF16_REVISION} is not complete" in done.stderr
    assert "app.kubernetes.io/component=model-download" in done.stderr
    # A marker from another commit is not this worker's checkpoint.
    folder = tmp_path / "Qwen" / "Qwen3-VL-8B-Instruct" / str(BF16_REVISION)
    folder.mkdir(parents=True)
    (folder / ".complete").write_text("f" * 40 + "\n")
    assert _run_script(script, tmp_path, timeout_s=60).returncode == 1
    (folder / ".complete").write_text(f"{BF16_REVISION}\n")
    assert _run_script(script, tmp_path, timeout_s=10).returncode == 0


def test_the_download_job_pins_each_checkpoint_and_skips_what_is_complete(tmp_path: Path) -> None:
    """The Job's script under sh, with a stand-in for `hf` (the hub is not reachable here)."""
    objects = _pvc_render()
    job = next(j for j in find(objects, "Job") if "models-" in j["metadata"]["name"])
    script = container(job)["args"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "hf"
    fake.write_text(
        '#!/bin/sh\necho "$@" >> "$HF_CALLS"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && mkdir -p "$2"; shift; done\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    os.environ["HF_CALLS"] = str(calls)
    try:
        first = _run_script(script, tmp_path / "models", timeout_s=60, path=str(bin_dir))
        assert first.returncode == 0, first.stderr
        fp8 = WORKER_PROFILES["gpu-fp8"]
        bf16 = WORKER_PROFILES["gpu-bf16"]
        assert sorted(calls.read_text().splitlines()) == sorted(
            f"download {p.model} --revision {p.revision} --local-dir "
            f"{tmp_path}/models/{p.model}/{p.revision}"
            for p in (bf16, fp8)
        )
        for p in (bf16, fp8):
            marker = tmp_path / "models" / p.model / str(p.revision) / ".complete"
            assert marker.read_text().strip() == p.revision
        calls.unlink()
        again = _run_script(script, tmp_path / "models", timeout_s=60, path=str(bin_dir))
        assert again.returncode == 0
        assert not calls.exists()  # both complete: nothing downloaded twice
        assert again.stdout.count("already complete") == 2
    finally:
        del os.environ["HF_CALLS"]


def test_jobs_have_deadlines_no_ttl_and_the_download_runs_on_a_small_image() -> None:
    placement = {
        "nodeSelector": {"node-role/cpu": "true"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
    }
    objects = _pvc_render(download=placement)
    for job in find(objects, "Job"):
        spec = job["spec"]
        assert spec["activeDeadlineSeconds"] > 0, job["metadata"]["name"]
        # Helm and Argo CD would create a Job again once a TTL deleted it.
        assert "ttlSecondsAfterFinished" not in spec, job["metadata"]["name"]
    download = next(j for j in find(objects, "Job") if "models-" in j["metadata"]["name"])
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    assert container(download)["image"] == gateway["image"]  # no CUDA, no GPU node
    spec = pod_spec(download)
    assert spec["nodeSelector"] == placement["nodeSelector"]
    assert spec["tolerations"] == placement["tolerations"]
    assert "nvidia.com/gpu" not in str(container(download)["resources"])


@pytest.mark.parametrize("mode", ["hub", "hostPath", "hostPath-offline", "pvc"])
def test_every_download_mode_pins_the_revision_and_takes_the_token_by_reference(
    mode: str,
) -> None:
    storage: dict[str, Any] = {
        "mode": mode.removesuffix("-offline"),
        "hfToken": {"existingSecret": "vlm-serve-hf-token"},
    }
    if mode == "hostPath-offline":
        storage["hostPath"] = {"offline": True}
    if mode == "pvc":
        storage["pvc"] = {"storageClassName": "efs-sc"}
    objects = render(profile_values("gpu-bf16", {"workers": {"modelStorage": storage}}))
    worker = container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"), "worker")
    env = env_of(worker)
    token = {"secretKeyRef": {"name": "vlm-serve-hf-token", "key": "hf-token"}}
    if mode == "pvc":
        job = next(j for j in find(objects, "Job") if "models-" in j["metadata"]["name"])
        assert env_of(container(job))["HF_TOKEN"] == token
        assert f"--revision '{BF16_REVISION}'" in container(job)["args"][0]
        assert env["WORKER_MODEL"].endswith(f"/{BF16_REVISION}")
    else:
        assert env["WORKER_REVISION"] == BF16_REVISION
        if mode != "hostPath-offline":  # offline reads the node's cache, nothing to fetch
            assert env["HF_TOKEN"] == token
    # The launcher turns the rendered environment into vLLM's arguments.
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    printed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *worker["args"][4:]], cwd=REPO_ROOT,
        env={**os.environ, **plain}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    command = printed.split('"command"', 1)[1]
    assert (f'"--revision",\n    "{BF16_REVISION}"' in command) == (mode != "pvc"), command


def test_a_model_in_the_image_is_not_looked_for_on_a_volume() -> None:
    pvc = {"mode": "pvc", "pvc": {"storageClassName": "efs-sc"}}
    claim = {"mode": "existingClaim", "existingClaim": {"name": "qwen-weights"}}
    for storage in (pvc, claim):
        with pytest.raises(RenderRefused, match="carries its model in the worker image"):
            render(profile_values("dev", {"workers": {"modelStorage": storage}}))


def test_a_checkpoint_without_a_pinned_commit_is_refused() -> None:
    unpinned = {"workers": {"pools": {"stable": {"revision": ""}}}}
    with pytest.raises(RenderRefused, match=r"workers\.pools\.stable\.revision: QuantTrio"):
        render(profile_values("gpu-awq", unpinned))
    # A model of your own needs your commit too: the profile's pin is for its own model.
    own = {"workers": {"pools": {"stable": {"model": "acme/qwen3-vl-8b-ft"}}}}
    with pytest.raises(RenderRefused, match="acme/qwen3-vl-8b-ft has no commit pinned"):
        render(profile_values("gpu-bf16", own))
    pinned = {"workers": {"pools": {"stable": {"model": "acme/qwen3-vl-8b-ft",
                                               "revision": AWQ_TEST_REVISION}}}}  # fmt: skip
    objects = render(profile_values("gpu-bf16", pinned))
    env = env_of(container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"), "worker"))
    assert (env["WORKER_MODEL"], env["WORKER_REVISION"]) == (
        "acme/qwen3-vl-8b-ft",
        AWQ_TEST_REVISION,
    )
    # Schema: a commit, not a branch name that moves.
    with pytest.raises(RenderRefused, match="revision"):
        render(profile_values("gpu-bf16", {"workers": {"pools": {"stable": {"revision": "main"}}}}))


def test_ci_installs_a_release_whose_migrations_run_as_a_pre_install_hook() -> None:
    """.github/workflows/helm-kind.yaml's second install takes the GPU profiles' path on a
    real (kind) cluster: the values it passes make the migrations a pre-install hook, and
    the replay finds nothing missing but the Secrets the step creates first."""
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "helm-kind.yaml").read_text())
    steps = workflow["jobs"]["ct-install"]["steps"]
    script = next(s["run"] for s in steps if "pre-install hook" in s.get("name", ""))
    command = script[script.index("helm install hook") :].split("helm test")[0]
    values: dict[str, Any] = {}
    for file in re.findall(r"--values=(\S+)", command):
        values = merge(values, yaml.safe_load((REPO_ROOT / file).read_text()))
    for path, raw in re.findall(r"--set=([^=\s]+)=(\S+)", command):
        value: Any = {"true": True, "false": False}.get(raw, raw)
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    objects = render(values)
    job = one(objects, "Job", "rel-vlm-serve-migrate")
    assert _annotations(job)["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert pod_spec(job)["serviceAccountName"] == "rel-vlm-serve-hooks"
    created = set(re.findall(r"create secret generic (\S+)", script))
    assert created == {"vlm-serve-database", "vlm-serve-redis"}
    for line in replay_helm(objects):
        assert line.rsplit("/", 1)[1] in created, line
