"""Named worker profiles and their translation into vLLM server arguments and environment.

A profile fixes everything that decides memory and concurrency. Any field can be
overridden from the environment as WORKER_<FIELD> (WORKER_MAX_NUM_SEQS=64,
WORKER_MODEL=/models/qwen3-vl-8b for clusters without internet access).

Memory arithmetic for Qwen3-VL-8B (8.8 B parameters: 6.9 B text transformer,
2 x 0.62 B untied embedding and LM head, 0.58 B vision encoder):

* KV cache per token, BF16: 36 layers x 8 KV heads x head_dim 128 x 2 (K and V)
  x 2 bytes = 147,456 B = 144 KiB. An FP8 KV cache halves it to 72 KiB.
* One request is about 1,500 tokens: an 800x800 product photo is 625 image tokens
  (sides rounded to multiples of 32, one token per 32x32 block), plus the prompt
  and an answer of a few hundred tokens. That is 211 MiB of KV cache in BF16.
* Besides weights and KV cache, vLLM reserves activation memory for the largest
  batch (max_num_batched_tokens), the vision encoder's profiling run and, on
  GPUs, CUDA graphs: about 3-4 GiB at 8k batched tokens, 2-3 GiB at 4k.

gpu-bf16 (A100/H100 80 GB): 0.90 x 80 = 72 GB usable; weights 17.5 GB; 4 GB
activations and CUDA graphs -> 50 GB KV = 340k tokens = ~225 requests of 1,500
tokens resident at once; max_num_seqs 128 leaves headroom for long answers and
multi-image prompts. On a 48 GB L40S the same profile leaves 22 GB = 150k tokens.

gpu-fp8 (H100/L40S class, native FP8 tensor cores): FP8 weights for the text
transformer, BF16 vision encoder and embeddings: 9.5 GB. L40S 48 GB: 0.90 x 48
- 9.5 - 3.5 = 30 GB KV = 205k tokens (~135 requests); H100 80 GB: 59 GB KV =
400k tokens. The KV cache stays BF16 (an FP8 KV cache would double it again, at
some accuracy cost: set WORKER_KV_CACHE_DTYPE=fp8 to choose that).

gpu-awq (24 GB A10/L4 class, 4-bit AWQ weights): 3.5 GB of int4 text weights
with scales, 2.5 GB BF16 embedding and LM head, 1.2 GB vision encoder = 7.3 GB.
0.90 x 24 = 21.6 GB - 7.3 - 2.5 (4k batched tokens) = 11.8 GB KV = 80k tokens
(~50 requests); max_num_seqs 32 and max_model_len 16k keep bursts inside it.

cpu-tiny: the random-weight test model (worker/tiny_model.py) on vLLM's CPU
build. One OpenMP thread per worker and a fixed KV-cache size, so that two
workers on a 2-core machine each keep one core instead of thrashing.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL_DIR = REPO_ROOT / ".models" / "tiny-qwen3-vl"
ENV_PREFIX = "WORKER_"


@dataclass(frozen=True)
class Profile:
    name: str
    device: Literal["cpu", "gpu"]
    model: str
    served_model_name: str
    # The checkpoint's commit on the hub (vLLM's --revision, which the tokenizer follows),
    # so that two hosts or two installs cannot load different weights under one name. None
    # for a local folder, or for a checkpoint whose commit you pin yourself (WORKER_REVISION).
    revision: str | None
    dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_images_per_prompt: int
    mm_processor_cache_gb: float
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    # Host threads for tensor work (CPU inference) or preprocessing (GPU).
    cpu_threads: int = 1
    # Cores the engine's OpenMP threads are pinned to ("nobind", "0", "1", "0-3").
    cpu_threads_bind: str = "nobind"
    cpu_kvcache_gib: int | None = None
    enforce_eager: bool = False
    # GPUs one worker shards the model over (vLLM's tensor parallelism).
    tensor_parallel_size: int = 1
    # Seconds vLLM lets running requests finish after SIGTERM (its --shutdown-timeout);
    # 0 is vLLM's default: abort them. The Helm chart sets it from its drain values.
    shutdown_timeout_s: int = 0
    # The structured-output (guided decoding) backend, pinned so that a vLLM upgrade
    # cannot switch grammars under us; JSON for --structured-outputs-config. Without
    # disable_any_whitespace the JSON grammar lets a model emit whitespace between tokens
    # until max_tokens (a random-weight model does; a real one rarely but can loop).
    structured_outputs: str = '{"backend": "xgrammar", "disable_any_whitespace": true}'
    # vLLM's tool-call parser ("" = tools off); Qwen3-VL emits Hermes-style <tool_call>.
    tool_call_parser: str = "hermes"
    # False sets VLLM_ENFORCE_STRICT_TOOL_CALLING=0: a named or "required" tool_choice is
    # then decoded with the tool's parameters as a plain JSON schema (disable_any_whitespace
    # applies, the arguments always match). vLLM's default (xgrammar structural tags)
    # leaves a tool without "strict": true free to send any JSON value as its arguments
    # (the tiny model answered `false`), and with "strict" its tag grammar still lets the
    # model emit whitespace until max_tokens, so the call never parses.
    structural_tool_tags: bool = False
    # Which server runs the engine: vLLM's own OpenAI server, or Triton Inference Server
    # with our Python-backend model (worker/triton/), which speaks KServe v2.
    engine: Literal["vllm", "triton"] = "vllm"
    # vLLM's --scheduling-policy. "priority": a request's `priority` field orders the queue
    # (lower first, then arrival) and a lower-priority running request is preempted when
    # the KV cache is short. Online requests carry vLLM's default 0; batch lines (the
    # batch runner, gateway/batch/) a larger number, so they only fill idle capacity.
    # "fcfs" (vLLM's default) refuses any priority but 0.
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    # vLLM's --max-logprobs: the most top_logprobs a request may ask for (the gateway caps
    # clients at 20, OpenAI's limit); -1: the whole vocabulary.
    max_logprobs: int = 20


PROFILES: dict[str, Profile] = {
    "gpu-bf16": Profile(
        name="gpu-bf16",
        device="gpu",
        model="Qwen/Qwen3-VL-8B-Instruct",
        served_model_name="Qwen/Qwen3-VL-8B-Instruct",
        revision="0c351dd01ed87e9c1b53cbc748cba10e6187ff3b",
        dtype="bfloat16",
        max_model_len=32768,
        max_num_seqs=128,
        max_num_batched_tokens=8192,
        max_images_per_prompt=4,
        mm_processor_cache_gb=4.0,
        gpu_memory_utilization=0.90,
        cpu_threads=8,
    ),
    "gpu-fp8": Profile(
        name="gpu-fp8",
        device="gpu",
        model="Qwen/Qwen3-VL-8B-Instruct-FP8",
        served_model_name="Qwen/Qwen3-VL-8B-Instruct",
        revision="9cdc6310a8cb770ce18efaf4e9935334512aee45",
        dtype="bfloat16",
        max_model_len=32768,
        max_num_seqs=128,
        max_num_batched_tokens=8192,
        max_images_per_prompt=4,
        mm_processor_cache_gb=4.0,
        gpu_memory_utilization=0.90,
        cpu_threads=8,
    ),
    "gpu-awq": Profile(
        name="gpu-awq",
        device="gpu",
        # A community 4-bit AWQ export (Qwen publishes none); point WORKER_MODEL
        # at the copy you have validated.
        model="QuantTrio/Qwen3-VL-8B-Instruct-AWQ",
        served_model_name="Qwen/Qwen3-VL-8B-Instruct",
        # Not pinned here: pin the commit you validated (WORKER_REVISION; the Helm chart
        # refuses to download it without one).
        revision=None,
        dtype="float16",
        max_model_len=16384,
        max_num_seqs=32,
        max_num_batched_tokens=4096,
        max_images_per_prompt=2,
        mm_processor_cache_gb=2.0,
        gpu_memory_utilization=0.90,
        # None: vLLM reads the scheme from the checkpoint (AWQ or compressed-tensors)
        # and picks the Marlin int4 kernels on Ampere and newer by itself.
        quantization=None,
        cpu_threads=4,
    ),
    "cpu-tiny": Profile(
        name="cpu-tiny",
        device="cpu",
        model=str(TINY_MODEL_DIR),
        served_model_name="qwen3-vl-tiny",
        revision=None,
        dtype="bfloat16",
        max_model_len=8192,
        max_num_seqs=32,
        max_num_batched_tokens=8192,
        max_images_per_prompt=2,
        mm_processor_cache_gb=0.25,
        cpu_threads=1,
        cpu_kvcache_gib=1,
        # The whole 640-token vocabulary: tests read a full next-token distribution.
        max_logprobs=-1,
    ),
}
# The same model and engine settings behind Triton (worker/triton/launcher.py).
PROFILES["triton-cpu-tiny"] = replace(PROFILES["cpu-tiny"], name="triton-cpu-tiny", engine="triton")


class ProfileError(ValueError):
    """An unknown profile or an override that does not parse."""


def _coerce(raw: str, annotation: object, env_name: str) -> object:
    """Parse one WORKER_* value into the type its Profile field declares."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if raw.strip().lower() in ("", "none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(raw, inner, env_name)
    if typing.get_origin(annotation) is Literal:
        if raw not in args:
            raise ProfileError(f"{env_name} must be one of {', '.join(map(str, args))}")
        return raw
    try:
        if annotation is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes")
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
    except ValueError:
        raise ProfileError(f"{env_name} is not a valid {annotation.__name__}") from None  # type: ignore[attr-defined]
    return raw


def resolve_profile(name: str, environ: Mapping[str, str]) -> Profile:
    """The named profile with every WORKER_<FIELD> override from environ applied."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    hints = typing.get_type_hints(Profile)
    overrides: dict[str, Any] = {}
    for field in fields(Profile):
        env_name = ENV_PREFIX + field.name.upper()
        if field.name != "name" and env_name in environ:
            overrides[field.name] = _coerce(environ[env_name], hints[field.name], env_name)
    return replace(profile, **overrides)


def server_args(profile: Profile, host: str, port: int) -> list[str]:
    """vLLM OpenAI server arguments for the profile. The API key is never an
    argument (it would show in `ps`): it travels as VLLM_API_KEY."""
    args = [
        "--model", profile.model,
        "--served-model-name", profile.served_model_name,
        "--host", host,
        "--port", str(port),
        "--dtype", profile.dtype,
        "--max-model-len", str(profile.max_model_len),
        "--max-num-seqs", str(profile.max_num_seqs),
        "--max-num-batched-tokens", str(profile.max_num_batched_tokens),
        # Images only: our API accepts no video, so the engine reserves nothing for it.
        "--limit-mm-per-prompt", json.dumps({"image": profile.max_images_per_prompt, "video": 0}),
        "--mm-processor-cache-gb", str(profile.mm_processor_cache_gb),
        "--kv-cache-dtype", profile.kv_cache_dtype,
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    args.append("--enable-prefix-caching" if profile.enable_prefix_caching
                else "--no-enable-prefix-caching")  # fmt: skip
    args.append("--enable-chunked-prefill" if profile.enable_chunked_prefill
                else "--no-enable-chunked-prefill")  # fmt: skip
    if profile.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(profile.gpu_memory_utilization)]
    if profile.quantization is not None:
        args += ["--quantization", profile.quantization]
    if profile.revision:
        args += ["--revision", profile.revision]
    if profile.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(profile.tensor_parallel_size)]
    if profile.enforce_eager:
        args.append("--enforce-eager")
    if profile.shutdown_timeout_s > 0:
        args += ["--shutdown-timeout", str(profile.shutdown_timeout_s)]
    if profile.structured_outputs:
        args += ["--structured-outputs-config", profile.structured_outputs]
    if profile.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", profile.tool_call_parser]
    args += ["--scheduling-policy", profile.scheduling_policy]
    args += ["--max-logprobs", str(profile.max_logprobs)]
    return args


def server_env(profile: Profile, api_key: str | None) -> dict[str, str]:
    """Environment variables the vLLM server process needs for the profile."""
    threads = str(profile.cpu_threads)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        # The engine already parallelises; tokenizer threads would oversubscribe.
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # The torchvision shim (worker/boot/sitecustomize.py) must load in every
        # process vLLM spawns.
        "PYTHONPATH": str(REPO_ROOT / "worker" / "boot"),
    }
    if not profile.structural_tool_tags:
        env["VLLM_ENFORCE_STRICT_TOOL_CALLING"] = "0"
    if profile.device == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = profile.cpu_threads_bind
        env["VLLM_CPU_KVCACHE_SPACE"] = str(profile.cpu_kvcache_gib or 1)
    else:
        # Fewer fragmentation OOMs when image batches vary in size.
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def describe(profile: Profile) -> dict[str, object]:
    return dataclasses.asdict(profile)
