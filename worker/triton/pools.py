"""python -m worker.triton.pools: the gateway's GATEWAY_WORKER_POOLS for Triton workers of a
profile (one pool, engine "triton"), as the local stack and the tests configure it.

    python -m worker.triton.pools --profile triton-cpu-tiny http://127.0.0.1:8100 ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from worker.profiles import PROFILES, resolve_profile


def triton_pool(
    profile_name: str, urls: list[str], metrics_port_offset: int = 2, name: str = "default"
) -> dict[str, object]:
    """One gateway pool of Triton workers serving the profile's model. The chat template
    is the checkpoint's own (a local checkpoint folder: the tiny model here)."""
    profile = resolve_profile(profile_name, os.environ)
    if profile.engine != "triton":
        raise ValueError(f"profile {profile_name} does not run Triton")
    if not Path(profile.model).is_dir():
        raise ValueError(f"the gateway needs the checkpoint's chat template: {profile.model}")
    return {
        "name": name,
        "engine": "triton",
        "urls": urls,
        "triton": {
            "served_model": profile.served_model_name,
            "chat_template": profile.model,
            "checkpoint": profile.model,
            "metrics_port_offset": metrics_port_offset,
            "max_model_len": profile.max_model_len,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.triton.pools")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="triton-cpu-tiny")
    parser.add_argument("--metrics-port-offset", type=int, default=2)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    pool = triton_pool(args.profile, args.urls, args.metrics_port_offset)
    print(json.dumps([pool]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
