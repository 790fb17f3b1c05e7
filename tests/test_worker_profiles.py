"""The profile-to-arguments translation, for every profile, without starting vLLM."""

from __future__ import annotations

import json
import re

import pytest

from worker.launcher import LaunchOptions, command, default_ready_file
from worker.profiles import (
    PROFILES,
    TINY_MODEL_DIR,
    ProfileError,
    resolve_profile,
    server_args,
    server_env,
)


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_translates_to_complete_server_arguments(name: str) -> None:
    profile = resolve_profile(name, {})
    args = server_args(profile, "0.0.0.0", 9000)

    assert _arg(args, "--model") == profile.model
    assert _arg(args, "--served-model-name") == profile.served_model_name
    assert _arg(args, "--host") == "0.0.0.0"
    assert _arg(args, "--port") == "9000"
    assert int(_arg(args, "--max-model-len")) == profile.max_model_len
    assert int(_arg(args, "--max-num-seqs")) == profile.max_num_seqs
    assert int(_arg(args, "--max-num-batched-tokens")) == profile.max_num_batched_tokens
    assert json.loads(_arg(args, "--limit-mm-per-prompt")) == {
        "image": profile.max_images_per_prompt,
        "video": 0,
    }
    assert float(_arg(args, "--mm-processor-cache-gb")) == profile.mm_processor_cache_gb
    assert "--enable-prefix-caching" in args
    assert "--enable-chunked-prefill" in args
    # Every flag appears once: vLLM would silently keep the last of two.
    flags = [a for a in args if a.startswith("--")]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_sets_thread_knobs_explicitly(name: str) -> None:
    profile = PROFILES[name]
    env = server_env(profile, None)
    for knob in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        assert knob in env
    assert env["OMP_NUM_THREADS"] == str(profile.cpu_threads)
    assert env["PYTHONPATH"].endswith("worker/boot")
    assert "VLLM_API_KEY" not in env


def test_gpu_profiles_pin_memory_and_quantisation() -> None:
    bf16 = server_args(PROFILES["gpu-bf16"], "h", 1)
    fp8 = server_args(PROFILES["gpu-fp8"], "h", 1)
    awq = server_args(PROFILES["gpu-awq"], "h", 1)
    for args in (bf16, fp8, awq):
        assert float(_arg(args, "--gpu-memory-utilization")) == pytest.approx(0.90)
    assert _arg(bf16, "--model") == "Qwen/Qwen3-VL-8B-Instruct"
    assert _arg(bf16, "--dtype") == "bfloat16"
    assert "--quantization" not in bf16
    assert "FP8" in _arg(fp8, "--model")
    assert "AWQ" in _arg(awq, "--model")
    assert _arg(awq, "--dtype") == "float16"  # AWQ kernels compute in FP16
    # The 24 GB profile must keep batches and contexts smaller than the 80 GB one.
    assert int(_arg(awq, "--max-num-seqs")) < int(_arg(bf16, "--max-num-seqs"))
    assert int(_arg(awq, "--max-model-len")) < int(_arg(bf16, "--max-model-len"))
    env = server_env(PROFILES["gpu-bf16"], None)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_cpu_tiny_serves_the_local_model_with_fixed_cpu_budget() -> None:
    profile = PROFILES["cpu-tiny"]
    args = server_args(profile, "127.0.0.1", 8100)
    env = server_env(profile, None)
    assert _arg(args, "--model") == str(TINY_MODEL_DIR)
    assert "--gpu-memory-utilization" not in args
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_environment_overrides_are_typed() -> None:
    profile = resolve_profile(
        "gpu-bf16",
        {
            "WORKER_MODEL": "/models/qwen3-vl-8b",
            "WORKER_MAX_NUM_SEQS": "64",
            "WORKER_GPU_MEMORY_UTILIZATION": "0.85",
            "WORKER_ENABLE_PREFIX_CACHING": "false",
            "WORKER_QUANTIZATION": "fp8",
            "WORKER_CPU_THREADS_BIND": "0",
            "UNRELATED": "ignored",
        },
    )
    args = server_args(profile, "h", 1)
    assert _arg(args, "--model") == "/models/qwen3-vl-8b"
    assert _arg(args, "--max-num-seqs") == "64"
    assert _arg(args, "--gpu-memory-utilization") == "0.85"
    assert "--no-enable-prefix-caching" in args
    assert "--enable-prefix-caching" not in args
    assert _arg(args, "--quantization") == "fp8"
    assert server_env(profile, None)["OMP_NUM_THREADS"] == "8"


def test_an_optional_field_can_be_cleared_from_the_environment() -> None:
    profile = resolve_profile("gpu-bf16", {"WORKER_QUANTIZATION": "fp8"})
    assert _arg(server_args(profile, "h", 1), "--quantization") == "fp8"
    cleared = resolve_profile(
        "gpu-bf16", {"WORKER_QUANTIZATION": "fp8", "WORKER_GPU_MEMORY_UTILIZATION": "none"}
    )
    assert "--gpu-memory-utilization" not in server_args(cleared, "h", 1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_MAX_NUM_SEQS": "many"}, "WORKER_MAX_NUM_SEQS"),
        ({"WORKER_ENABLE_PREFIX_CACHING": "maybe"}, "WORKER_ENABLE_PREFIX_CACHING"),
        ({"WORKER_DEVICE": "tpu"}, "WORKER_DEVICE"),
    ],
)
def test_bad_overrides_are_refused_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        resolve_profile("cpu-tiny", env)


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ProfileError, match="unknown profile"):
        resolve_profile("gpu-fp4", {})


def test_api_key_travels_in_the_environment_not_on_the_command_line() -> None:
    profile = PROFILES["gpu-bf16"]
    options = LaunchOptions("h", 1, default_ready_file(1), 10.0, "sk-secret")
    assert "sk-secret" not in " ".join(command(profile, options))
    assert server_env(profile, "sk-secret")["VLLM_API_KEY"] == "sk-secret"


def test_command_runs_the_openai_server_module() -> None:
    options = LaunchOptions("h", 1, default_ready_file(1), 10.0, None)
    cmd = command(PROFILES["cpu-tiny"], options, python="/venv/bin/python")
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]


def test_hub_checkpoints_are_pinned_to_a_commit_and_tensor_parallelism_is_an_override() -> None:
    for name in ("gpu-bf16", "gpu-fp8"):
        args = server_args(PROFILES[name], "h", 1)
        assert re.fullmatch(r"[0-9a-f]{40}", _arg(args, "--revision")), name
        assert "--tensor-parallel-size" not in args
    # A local folder (cpu-tiny) or a commit left to the operator (the community AWQ export).
    assert "--revision" not in server_args(PROFILES["cpu-tiny"], "h", 1)
    assert "--revision" not in server_args(PROFILES["gpu-awq"], "h", 1)
    sha = "a" * 40
    env = {"WORKER_REVISION": sha, "WORKER_TENSOR_PARALLEL_SIZE": "2"}
    args = server_args(resolve_profile("gpu-awq", env), "h", 1)
    assert (_arg(args, "--revision"), _arg(args, "--tensor-parallel-size")) == (sha, "2")
    # "" clears a pin (the chart does so where WORKER_MODEL is a local folder).
    assert "--revision" not in server_args(
        resolve_profile("gpu-bf16", {"WORKER_REVISION": ""}), "h", 1
    )
