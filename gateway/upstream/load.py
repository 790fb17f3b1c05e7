"""A worker's load as its /metrics body reports it: vLLM's scheduler gauges, and for a
Triton worker Triton's pending count beside them (kserve/engine.py)."""

from __future__ import annotations

from typing import Final

Load = tuple[float, float, float]  # running, waiting, KV-cache usage

_RUNNING: Final = "vllm:num_requests_running"
_WAITING: Final = "vllm:num_requests_waiting"
_KV_USAGE: Final = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PENDING: Final = "nv_inference_pending_request_count"  # Triton's own queue


def _label(line: str, name: str) -> str | None:
    start = line.find(f'{name}="')
    if start < 0:
        return None
    start += len(name) + 2
    return line[start : line.find('"', start)]


def _parse(text: str, waiting_names: tuple[str, ...], model: str | None) -> Load | None:
    """Summed over label sets (a ``model`` label, when given, must name ``model``); None
    when the body has none of the queue gauges."""
    running = waiting = kv = 0.0
    seen = False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name != _RUNNING and name not in waiting_names and name not in _KV_USAGE:
            continue
        if model is not None and _label(line, "model") not in (model, None):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running += value
            seen = True
        elif name in waiting_names:
            waiting += value
            seen = True
        else:
            kv = max(kv, value)
    return (running, waiting, kv) if seen else None


def parse_load(text: str) -> Load | None:
    """(running, waiting, KV-cache usage) from a vLLM worker's /metrics body; None when
    the body has none of vLLM's scheduler gauges."""
    return _parse(text, (_WAITING,), None)


def parse_triton_load(text: str, model: str) -> Load | None:
    """The same for ``model`` from Triton's metrics, Triton's pending requests counted as
    waiting; None when the body has neither Triton's pending count nor vLLM's gauges."""
    return _parse(text, (_WAITING, _PENDING), model)
