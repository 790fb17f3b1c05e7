"""bench_replicas' choice of worker profile and client workload from BENCH_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.bench.vllm_bench import bench_config_from_env
from worker.profiles import TINY_MODEL_DIR


def test_the_default_is_the_cpu_tiny_workload() -> None:
    profile, config = bench_config_from_env({})
    assert profile == "cpu-tiny"
    assert (config.model, config.tokenizer) == ("qwen3-vl-tiny", TINY_MODEL_DIR)
    assert (config.num_prompts, config.concurrency) == (96, 16)


def test_a_gpu_profile_uses_the_real_model_and_its_tokenizer() -> None:
    env = {"BENCH_PROFILE": "gpu-fp8", "BENCH_NUM_PROMPTS": "512", "BENCH_CONCURRENCY": "64"}
    profile, config = bench_config_from_env(env)
    assert profile == "gpu-fp8"
    assert config.model == "Qwen/Qwen3-VL-8B-Instruct"
    assert config.tokenizer == Path("Qwen/Qwen3-VL-8B-Instruct-FP8")
    assert (config.num_prompts, config.concurrency) == (512, 64)

    local = bench_config_from_env({**env, "WORKER_MODEL": "/models/qwen3-vl-8b-fp8"})[1]
    assert local.tokenizer == Path("/models/qwen3-vl-8b-fp8")


def test_an_unknown_profile_stops_the_benchmark() -> None:
    with pytest.raises(SystemExit, match="gpu-tpu"):
        bench_config_from_env({"BENCH_PROFILE": "gpu-tpu"})
