"""Run vLLM's benchmark client (backend openai-chat, dataset random-mm) against any
OpenAI-compatible endpoint: a worker directly, Nginx, or Nginx + gateway."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from localstack.processes import WORKER_PYTHON
from worker.profiles import PROFILES, REPO_ROOT, TINY_MODEL_DIR

REPORTED = (
    "request_throughput",
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
)


@dataclass(frozen=True)
class BenchConfig:
    model: str = "qwen3-vl-tiny"
    tokenizer: Path = TINY_MODEL_DIR
    num_prompts: int = 96
    concurrency: int = 16
    input_len: int = 64
    output_len: int = 32
    # One 640x480 product photo per request: 300 image tokens in Qwen3-VL.
    image_height: int = 480
    image_width: int = 640

    def describe(self) -> str:
        return (
            f"{self.num_prompts} requests, concurrency {self.concurrency}, one "
            f"{self.image_width}x{self.image_height} image + {self.input_len} text tokens in, "
            f"{self.output_len} tokens out"
        )


def run_vllm_bench(
    base_url: str, config: BenchConfig, seed: int, api_key: str | None = None
) -> dict[str, Any]:
    """One benchmark run; returns vLLM's result JSON (throughputs, latency percentiles).

    ``api_key`` goes out as ``Authorization: Bearer`` (vLLM's client reads OPENAI_API_KEY)."""
    with tempfile.TemporaryDirectory() as result_dir:
        cmd = [
            str(WORKER_PYTHON), "-m", "worker.bench_serve",
            "--backend", "openai-chat",
            "--base-url", base_url,
            "--endpoint", "/v1/chat/completions",
            "--model", config.model,
            "--tokenizer", str(config.tokenizer),
            "--dataset-name", "random-mm",
            "--num-prompts", str(config.num_prompts),
            "--max-concurrency", str(config.concurrency),
            "--random-input-len", str(config.input_len),
            "--random-output-len", str(config.output_len),
            "--random-mm-base-items-per-request", "1",
            "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
            "--random-mm-bucket-config",
            f"{{({config.image_height}, {config.image_width}, 1): 1.0}}",
            "--ignore-eos",
            "--seed", str(seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99",
            "--disable-tqdm",
            "--save-result", "--result-dir", result_dir, "--result-filename", "result.json",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "worker" / "boot")}
        env.pop("OPENAI_API_KEY", None)
        if api_key:
            env["OPENAI_API_KEY"] = api_key
        completed = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"vllm bench failed:\n{completed.stdout[-2000:]}")
        result: dict[str, Any] = json.loads((Path(result_dir) / "result.json").read_text())
    if result.get("failed"):
        raise RuntimeError(f"{result['failed']} benchmark requests failed against {base_url}")
    return result


def bench_config_from_env(environ: dict[str, str] | None = None) -> tuple[str, BenchConfig]:
    """The worker profile and vLLM client workload, from BENCH_* variables (GPU hosts)."""
    env = dict(os.environ if environ is None else environ)
    profile = env.get("BENCH_PROFILE", "cpu-tiny")
    if profile not in PROFILES:
        raise SystemExit(f"BENCH_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    chosen = PROFILES[profile]
    config = BenchConfig()
    tokenizer = env.get("BENCH_TOKENIZER") or (
        str(TINY_MODEL_DIR) if chosen.device == "cpu" else env.get("WORKER_MODEL", chosen.model)
    )
    config = replace(
        config,
        model=env.get("BENCH_MODEL", chosen.served_model_name),
        tokenizer=Path(tokenizer),
        num_prompts=int(env.get("BENCH_NUM_PROMPTS", config.num_prompts)),
        concurrency=int(env.get("BENCH_CONCURRENCY", config.concurrency)),
    )
    return profile, config
