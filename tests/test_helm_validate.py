"""Every rendered object is valid Kubernetes (bundled schemas), passes policy checks, and the
real helm binary lints, templates and dry-runs the chart. Nothing reaches a cluster."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import (
    CHART,
    HELM_BIN,
    HELM_VENV_BIN,
    KUBE_VERSIONS,
    MONITORING_API,
    NODE_MODULES,
    PROFILES,
    Manifest,
    helm_args,
    one,
    profile_values,
    render,
    tool_env,
    write_manifests,
)
from worker.profiles import REPO_ROOT

CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "HTTPRoute"}
CRD_APIS = (MONITORING_API, "keda.sh/v1alpha1", "gateway.networking.k8s.io/v1")
# Optional features switched on, so that their objects are checked too.
EVERYTHING = {
    "nginx": {"enabled": True},
    "ingress": {"enabled": True, "tlsSecret": "vlm-tls"},
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "edge"}]},
    "workers": {"keda": {"enabled": True}},
}
# Policy findings we accept, each for a reason.
CHECKOV_SKIPS = {
    # Tags are set by the user's pipeline; a digest cannot be known when the chart is written.
    "CKV_K8S_43": "image digests",
    # Tags are immutable release tags; Always would make every restart depend on a registry.
    "CKV_K8S_15": "pull policy Always",
    # CPU limits throttle the gateway's event loop and vLLM's scheduler (requests are set).
    "CKV_K8S_11": "CPU limits",
    # The gateway and vLLM read settings from the environment, by secretKeyRef only.
    "CKV_K8S_35": "secrets as files",
    # The helm test pod runs to completion: no probes.
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
}


def _run(
    cmd: list[str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=tool_env(),
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip


# The storage modes' objects too: the download Job and its claim, a volume per worker.
STORAGE: dict[str, tuple[str, dict[str, Any]]] = {
    "gpu-bf16-pvc": ("gpu-bf16", {"workers": {"modelStorage": {
        "mode": "pvc", "pvc": {"storageClassName": "efs-sc"},
        "hfToken": {"existingSecret": "vlm-serve-hf-token"}}}}),
    "gpu-fp8-ephemeral": ("gpu-fp8", {"workers": {"modelStorage": {
        "hub": {"volume": "ephemeral"}}}}),
}  # fmt: skip


def _all_renders() -> Iterator[tuple[str, str, list[Manifest]]]:
    variants: dict[str, tuple[str, dict[str, Any]]] = {p: (p, {}) for p in sorted(PROFILES)}
    variants |= STORAGE
    for name, (profile, extra) in variants.items():
        for kube_version in KUBE_VERSIONS:
            objects = render(
                profile_values(profile, EVERYTHING, extra), kube_version=kube_version,
                api_versions=CRD_APIS,
            )  # fmt: skip
            yield name, kube_version, objects


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every profile x Kubernetes version, every option on, one file per object."""
    root = tmp_path_factory.mktemp("rendered")
    folders = {}
    for profile, kube_version, objects in _all_renders():
        folder = root / profile / kube_version
        write_manifests([o for o in objects if o["kind"] not in CRD_KINDS], folder)
        (folder.parent / f"{kube_version}-crds.json").write_text(
            json.dumps([o for o in objects if o["kind"] in CRD_KINDS])
        )
        folders[profile, kube_version] = folder
    return folders


def test_every_object_validates_against_its_kubernetes_schema(
    rendered: dict[tuple[str, str], Path],
) -> None:
    for (profile, kube_version), folder in rendered.items():
        files = sorted(str(p) for p in folder.glob("*.yaml"))
        done = _run([str(HELM_VENV_BIN / "kubernetes-validate"), "-k", kube_version[1:],
                     "--strict", "--quiet", *files])  # fmt: skip
        assert done.returncode == 0, f"{profile} {kube_version}:\n{done.stdout}{done.stderr}"


def test_the_schema_validator_catches_an_unknown_field(tmp_path: Path) -> None:
    deployment = one(render(profile_values("dev")), "Deployment", "rel-vlm-serve-gateway")
    deployment["spec"]["template"]["spec"]["contianers"] = []
    (path,) = write_manifests([deployment], tmp_path)
    done = _run([str(HELM_VENV_BIN / "kubernetes-validate"), "-k", "1.30.0", "--strict", str(path)])
    assert done.returncode != 0
    assert "contianers" in done.stdout + done.stderr


def test_crd_kinds_validate_with_their_models(rendered: dict[tuple[str, str], Path]) -> None:
    script = str(REPO_ROOT / "helm" / "tools" / "validate-crds.mjs")
    seen: set[str] = set()
    for (profile, kube_version), folder in rendered.items():
        objects: list[Manifest] = json.loads(
            (folder.parent / f"{kube_version}-crds.json").read_text()
        )
        seen |= {o["kind"] for o in objects}
        done = _run(["node", script, str(NODE_MODULES)], stdin=json.dumps(objects))
        assert done.returncode == 0, f"{profile} {kube_version}:\n{done.stdout}{done.stderr}"
        assert done.stdout.count("OK ") == len(objects)
    assert seen == CRD_KINDS
    # ...and the validators do refuse a wrong object: a ServiceMonitor port given as a number.
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["port"] = 8000
    done = _run(["node", script, str(NODE_MODULES)], stdin=json.dumps([monitor]))
    assert done.returncode == 1
    assert "port must be string" in done.stdout


def test_policy_checks_pass(rendered: dict[tuple[str, str], Path]) -> None:
    # One Kubernetes version: the objects differ between versions only in Capabilities.
    root = next(iter(rendered.values())).parent.parent
    done = _run(
        [str(HELM_VENV_BIN / "checkov"), "-d", str(root), "--framework", "kubernetes",
         "--skip-download", "--compact", "--quiet", "-o", "json",
         "--skip-check", ",".join(CHECKOV_SKIPS)],
        timeout=300,
    )  # fmt: skip
    reports: Any = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{f['check_id']} {f['check_name']}: {f['resource']}"
        for report in reports
        for f in report["results"]["failed_checks"]
    ]
    passed = sum(report["summary"]["passed"] for report in reports)
    assert not failed, "\n".join(failed)
    assert passed > 1000  # the checks did run over every object


def test_helm_lint_strict_for_every_profile(tmp_path: Path) -> None:
    for profile in PROFILES:
        done = _run([str(HELM_BIN), "lint", "--strict", str(CHART), *helm_args(profile)])
        assert done.returncode == 0, f"{profile}:\n{done.stdout}{done.stderr}"
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_the_helm_binary_renders_what_the_library_renders() -> None:
    """The same objects from `helm template` as from the library the other tests use."""
    for profile in PROFILES:
        done = _run([str(HELM_BIN), "template", "rel", str(CHART), "--namespace", "vlm",
                     "--kube-version", KUBE_VERSIONS[0], "--api-versions", MONITORING_API,
                     *helm_args(profile)])  # fmt: skip
        assert done.returncode == 0, done.stderr
        names = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in _yaml_docs(done.stdout))
        library = render(profile_values(profile), api_versions=(MONITORING_API,))
        assert names == sorted(f"{m['kind']}/{m['metadata']['name']}" for m in library)


def test_helm_install_dry_run_client_and_a_refusal() -> None:
    values = f"--values={CHART / 'profiles' / 'dev.yaml'}"
    done = _run([str(HELM_BIN), "install", "rel", str(CHART), "--dry-run=client",
                 "--namespace", "vlm", values])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "STATUS: pending-install" in done.stdout
    assert "helm test rel" in done.stdout  # NOTES.txt
    refused = _run([str(HELM_BIN), "install", "rel", str(CHART), "--dry-run=client", values,
                    "--set", "gateway.terminationGracePeriodSeconds=10"])  # fmt: skip
    assert refused.returncode != 0
    assert re.search(r"terminationGracePeriodSeconds \(10\) is shorter", refused.stderr)


def _yaml_docs(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
