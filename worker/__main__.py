"""python -m worker: serve a profile, print its arguments, or check readiness.

    python -m worker serve [--profile cpu-tiny] [--host 127.0.0.1] [--port 8100]
    python -m worker args  [--profile gpu-bf16]      # the vLLM command, nothing started
    python -m worker ready [--port 8100]             # exit 0 when warmed up (probes)

A profile with engine "triton" (triton-cpu-tiny) runs Triton Inference Server with our
model repository instead (worker/triton/launcher.py; from .venv-triton), its Prometheus
metrics on WORKER_METRICS_PORT (default: the port + 2, as Triton's own 8000 and 8002).

Every profile field can be overridden as WORKER_<FIELD> (see worker/profiles.py);
WORKER_API_KEY sets the key the server requires on /v1/*.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from worker.launcher import LaunchOptions, command, default_ready_file, ensure_tiny_model, run
from worker.profiles import PROFILES, Profile, ProfileError, describe, resolve_profile, server_env

if TYPE_CHECKING:
    from worker.triton.launcher import TritonOptions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("serve", "args", "ready"):
        p = sub.add_parser(action)
        p.add_argument("--port", type=int, default=int(os.environ.get("WORKER_PORT", "8100")))
        if action == "ready":
            continue
        p.add_argument(
            "--profile",
            choices=sorted(PROFILES),
            default=os.environ.get("WORKER_PROFILE", "cpu-tiny"),
        )
        p.add_argument("--host", default=os.environ.get("WORKER_HOST", "127.0.0.1"))
        p.add_argument(
            "--startup-timeout",
            type=float,
            default=float(os.environ.get("WORKER_STARTUP_TIMEOUT", "900")),
            help="seconds to wait for health and warm-up",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.action == "ready":
        return 0 if default_ready_file(args.port).exists() else 1
    try:
        profile = resolve_profile(args.profile, os.environ)
    except ProfileError as exc:
        print(f"[worker] {exc}", file=sys.stderr)
        return 2
    options = LaunchOptions(
        host=args.host,
        port=args.port,
        ready_file=default_ready_file(args.port),
        startup_timeout_s=args.startup_timeout,
        api_key=os.environ.get("WORKER_API_KEY") or None,
    )
    if profile.engine == "triton" and args.action == "serve":
        return _serve_triton(profile, options)
    if profile.engine == "triton":  # args: the model's engine arguments (its model.json)
        from worker.triton.launcher import engine_args

        print(json.dumps({"profile": describe(profile), "model.json": engine_args(profile),
                          "env": server_env(profile, None)}, indent=2))  # fmt: skip
        return 0
    if args.action == "args":
        env = server_env(profile, None)
        print(json.dumps({"profile": describe(profile), "command": command(profile, options),
                          "env": env}, indent=2))  # fmt: skip
        return 0
    return run(profile, options)


def triton_options(profile: Profile, options: LaunchOptions) -> TritonOptions:
    """The launcher's settings; the drain (WORKER_SHUTDOWN_TIMEOUT_S, set by the chart from
    its drain values) becomes Triton's --exit-timeout-secs, as it is vLLM's
    --shutdown-timeout."""
    from worker.triton.launcher import TritonOptions

    metrics_port = int(os.environ.get("WORKER_METRICS_PORT", options.port + 2))
    run_dir = os.environ.get("WORKER_RUN_DIR", f"/tmp/vlm-triton-{options.port}")
    return TritonOptions(
        host=options.host,
        port=options.port,
        metrics_port=metrics_port,
        ready_file=options.ready_file,
        run_dir=Path(run_dir),
        startup_timeout_s=options.startup_timeout_s,
        load_timeout_s=float(os.environ.get("WORKER_TRITON_LOAD_TIMEOUT_S", "600")),
        exit_timeout_s=profile.shutdown_timeout_s or TritonOptions.exit_timeout_s,
    )


def _serve_triton(profile: Profile, options: LaunchOptions) -> int:
    from worker.triton.launcher import run as run_triton

    ensure_tiny_model(profile)
    return run_triton(profile, triton_options(profile, options))


if __name__ == "__main__":
    sys.exit(main())
