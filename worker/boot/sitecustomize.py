"""Loaded first by every Python process the worker starts (the launcher puts this
folder on PYTHONPATH), including the engine processes vLLM spawns.

PyPI's torchvision is a CUDA build; beside CPU torch its compiled ops do not load,
and `torchvision/_meta_registrations.py` then fails on import because it registers
fake kernels for `torchvision::nms` and `torchvision::qnms`, which no longer exist.
vLLM's Qwen3-VL module imports torchvision, so we define those two schemas just
before torchvision is first imported. A meta-path hook keeps torch itself from
being imported by processes that never touch torchvision (pip, the launcher).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def define_missing_torchvision_ops() -> None:
    import torch

    if torch.version.cuda is not None:
        # CUDA torch (the GPU image): torchvision's own ops load and register these names;
        # defining them first would clash.
        return
    for name, schema in _SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, name):
            torch.library.define(f"torchvision::{name}", schema)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_missing_torchvision_ops()
        return None  # the regular finders do the import


sys.meta_path.insert(0, _BeforeTorchvision())
