"""Run Triton Inference Server with our model repository for a profile (engine "triton").

The server is the `tritonserver` that PyPI's nvidia-pytriton wheel bundles (Triton 2.51),
run from the Triton environment (.venv-triton, numpy < 2: see docs/TRITON.md). The
launcher:

* copies worker/triton/model_repository into a run folder, writes the model's model.json
  (vLLM engine arguments from the profile) and points EXECUTION_ENV_PATH at this
  environment;
* puts the Python-backend stub for this Python beside the backend (the wheel ships one
  per Python version in a folder of its own);
* starts the server in a process group of its own, and watches the start: a model load
  can hang with nothing logged (Triton waiting on the stub), so a load that is not ready
  within ``load_timeout_s`` is killed and started again, ``attempts`` times at most;
* warms the model up with an image request, then writes the ready file;
* forwards SIGTERM (Triton drains, unloads the model, whose finalize stops the engine),
  and after the server exits kills whatever is left in its process group, so no
  EngineCore outlives it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from worker import readiness
from worker.profiles import REPO_ROOT, Profile, server_env
from worker.sample_image import png_bytes

MODEL_REPOSITORY = REPO_ROOT / "worker" / "triton" / "model_repository"
MODEL_NAME = "vllm_model"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonOptions:
    host: str
    port: int
    metrics_port: int
    ready_file: Path
    run_dir: Path
    startup_timeout_s: float
    load_timeout_s: float = 600.0
    attempts: int = 2
    exit_timeout_s: int = 30


def pytriton_dir() -> Path:
    """The installed pytriton package (found, not imported: its Python API is not used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed here: run `make triton-install`")
    return Path(next(iter(spec.submodule_search_locations)))


def backend_directory() -> Path:
    """Triton's backends, with this Python's stub beside the Python backend."""
    root = pytriton_dir() / "tritonserver"
    python_backend = root / "backends" / "python"
    stub = python_backend / "triton_python_backend_stub"
    if not stub.exists():
        shutil.copy2(root / "python_backend_stubs" / PYTHON_VERSION / stub.name, stub)
    return root / "backends"


def engine_args(profile: Profile) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for the profile: what `worker.profiles.server_args` gives
    vLLM's own server, as the official backend's model.json."""
    args: dict[str, Any] = {
        "model": profile.model,
        "served_model_name": [profile.served_model_name],
        "dtype": profile.dtype,
        "max_model_len": profile.max_model_len,
        "max_num_seqs": profile.max_num_seqs,
        "max_num_batched_tokens": profile.max_num_batched_tokens,
        "limit_mm_per_prompt": {"image": profile.max_images_per_prompt, "video": 0},
        "mm_processor_cache_gb": profile.mm_processor_cache_gb,
        "kv_cache_dtype": profile.kv_cache_dtype,
        "enable_prefix_caching": profile.enable_prefix_caching,
        "enable_chunked_prefill": profile.enable_chunked_prefill,
        "enforce_eager": profile.enforce_eager,
    }
    if profile.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = profile.gpu_memory_utilization
    if profile.quantization is not None:
        args["quantization"] = profile.quantization
    if profile.structured_outputs:
        args["structured_outputs_config"] = json.loads(profile.structured_outputs)
    return args


def prepare_repository(profile: Profile, run_dir: Path, env_path: Path) -> Path:
    """A copy of our model repository with model.json and EXECUTION_ENV_PATH filled in."""
    repository = run_dir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(MODEL_REPOSITORY, repository,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    model_dir = repository / MODEL_NAME
    (model_dir / "model.json").write_text(json.dumps(engine_args(profile), indent=2))
    with (model_dir / "config.pbtxt").open("a") as config:
        config.write(
            '\nparameters: { key: "EXECUTION_ENV_PATH" '
            f'value: {{ string_value: "{env_path}" }} }}\n'
        )
    return repository


def command(options: TritonOptions, repository: Path) -> list[str]:
    server = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    return [
        str(server),
        f"--model-repository={repository}",
        f"--backend-directory={backend_directory()}",
        f"--http-address={options.host}",
        f"--http-port={options.port}",
        "--allow-grpc=false",
        "--allow-metrics=true",
        f"--metrics-port={options.metrics_port}",
        # Loaded at start, ready only when the model is: /v2/health/ready covers both.
        "--model-control-mode=none",
        "--strict-readiness=true",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        "--log-verbose=0",
    ]


def environment(profile: Profile) -> dict[str, str]:
    env = {**os.environ, **server_env(profile, None)}
    # The stub runs isolated (PYTHONPATH is ignored); the shim reaches it through the
    # .pth file the Makefile writes into this environment.
    env.pop("PYTHONPATH", None)
    env.pop("WORKER_API_KEY", None)
    # The stub links libpython: the one of the interpreter this environment was made
    # with, not another 3.11 the system may have (their standard libraries differ).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["LC_ALL"] = env["LC_CTYPE"] = "C.UTF-8"
    return env


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def warm_up(base_url: str, timeout: float) -> str:
    """One streamed image request through generate_stream; returns the text or raises."""
    import base64

    body = {
        "text_input": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "warm-up: describe this image<|im_end|>\n<|im_start|>assistant\n",
        "image": [base64.b64encode(png_bytes(64, 64)).decode()],
        "stream": True,
        "exclude_input_in_output": True,
        "sampling_parameters": json.dumps({"max_tokens": 2, "temperature": 0}),
    }
    request = urllib.request.Request(
        f"{base_url}/v2/models/{MODEL_NAME}/generate_stream",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read().decode()
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    if not events or any("error" in event for event in events):
        raise RuntimeError(f"warm-up failed: {raw[:500]}")
    return "".join(str(event.get("text_output", "")) for event in events)


def _stop_group(server: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the server, wait, then SIGKILL everything left in its process group."""
    if server.poll() is None:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=grace_s)
    _kill_group(server)


def _kill_group(server: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)
    if server.poll() is None:
        server.wait()


def _start(options: TritonOptions, profile: Profile) -> subprocess.Popen[bytes] | None:
    """Start the server and wait (watchdog) until it is ready; None when it never was."""
    env_path = Path(sys.prefix)
    repository = prepare_repository(profile, options.run_dir, env_path)
    cmd = command(options, repository)
    base_url = f"http://{_connect_host(options.host)}:{options.port}"
    deadline = time.monotonic() + options.startup_timeout_s
    for attempt in range(1, options.attempts + 1):
        print(f"[worker] triton (attempt {attempt}): {' '.join(cmd)}", flush=True)
        server = subprocess.Popen(cmd, env=environment(profile), start_new_session=True)
        load_deadline = min(time.monotonic() + options.load_timeout_s, deadline)
        while time.monotonic() < load_deadline and server.poll() is None:
            if _ready(base_url):
                return server
            time.sleep(1.0)
        if server.poll() is not None:
            print(f"[worker] triton exited with {server.returncode} while loading", flush=True)
        else:
            print(f"[worker] triton not ready after {options.load_timeout_s:.0f}s: "
                  "restarting it (watchdog)", flush=True)  # fmt: skip
        _stop_group(server, 10.0)
        if time.monotonic() >= deadline:
            break
    return None


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def run(profile: Profile, options: TritonOptions) -> int:
    readiness.clear_ready(options.ready_file)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    stopping = False
    server: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        readiness.clear_ready(options.ready_file)
        if server is not None and server.poll() is None:
            server.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = _start(options, profile)
        if server is None or stopping:
            if server is not None:
                _stop_group(server, options.exit_timeout_s + 15)
            return 1
        base_url = f"http://{_connect_host(options.host)}:{options.port}"
        started = time.monotonic()
        try:
            warm_up(base_url, timeout=max(options.startup_timeout_s, 30.0))
        except Exception as exc:  # an unready worker must not linger
            print(f"[worker] warm-up failed: {type(exc).__name__}: {exc}", flush=True)
            _stop_group(server, options.exit_timeout_s + 15)
            return 1
        readiness.mark_ready(options.ready_file)
        print(
            f"[worker] ready on {base_url} (triton, metrics on port {options.metrics_port}; "
            f"warm-up {time.monotonic() - started:.2f}s); ready file {options.ready_file}",
            flush=True,
        )
        code = server.wait()
        _kill_group(server)  # anything the server left behind (an orphaned EngineCore)
        return code
    finally:
        readiness.clear_ready(options.ready_file)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
