"""Loaded first by every Python process the worker starts (the launcher puts this
folder on PYTHONPATH), including the engine processes vLLM spawns. Two jobs.

**The torchvision shim.**

PyPI's torchvision is a CUDA build; beside CPU torch its compiled ops do not load,
and `torchvision/_meta_registrations.py` then fails on import because it registers
fake kernels for `torchvision::nms` and `torchvision::qnms`, which no longer exist.
vLLM's Qwen3-VL module imports torchvision, so we define those two schemas just
before torchvision is first imported. A meta-path hook keeps torch itself from
being imported by processes that never touch torchvision (pip, the launcher).

**Children end with their parent.** vLLM's API server starts the engine core, which starts
its workers (forked, or spawned with a fresh interpreter), and a multiprocessing resource
tracker. When the API server was SIGKILLed they lived on as orphans (2 GB and a tenth of a
core each, for hours). So each of these processes watches its parent: once it is gone
(the process was handed to another parent), it sends itself SIGTERM, which vLLM's
processes answer with their own shutdown, and exits for good if that has not ended it
within ``_GRACE_S``. A watch thread rather than the kernel's parent-death signal: that
signal fires when the parent *thread* ends, and vLLM and torch start helper processes
from threads. The launcher turns it on for its server (``WORKER_PARENT_PID``, its own
pid); each process passes its own pid on to those it spawns, and re-arms the watch in the
children it forks (threads do not survive a fork).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
import threading
import time
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

# --- children end with their parent ---------------------------------------------------------

PARENT_ENV = "WORKER_PARENT_PID"
_POLL_S = 0.5
_GRACE_S = 10.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_GRACE_S)
    os._exit(1)


def _arm(parent: int) -> None:
    if os.getppid() != parent:  # the parent ended before this process got here
        os._exit(1)
    os.environ[PARENT_ENV] = str(os.getpid())  # what the processes this one spawns watch
    threading.Thread(target=_watch, args=(parent,), name="lifeline", daemon=True).start()


def watch_parent() -> None:
    """Watch the parent named in the environment, and arm every forked child likewise."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return
    _arm(int(parent))
    # A forked child's environment still names the process that forked it.
    os.register_at_fork(after_in_child=lambda: _arm(int(os.environ[PARENT_ENV])))


watch_parent()
