"""The front-door probe: a blackbox-exporter module that sends a real chat request the way a
client does (through Nginx, or the ingress), and the Prometheus job that runs it.

python -m deploy.prometheus.blackbox OUT --model NAME [--api-key-file FILE]

The request is one token of text: cheap, and cacheable, so while the answer cache holds
it the probe tests the front door, the gateways, authentication and the cache, not the
workers (the gateways' own view pages for those). A 200 with a `choices` array is a
success; anything else (Nginx's own 502/503/504, a 401 from a revoked key, a timeout) is
not. The output is JSON, which is YAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MODULE = "vlm_chat"
JOB = "front-door"
# Seconds: an answer from the cache takes milliseconds, a worker's one token well under a
# second; the scrape interval of the probe job must be longer.
TIMEOUT_S = 8


def probe_body(model: str) -> str:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "front-door probe: say ok"}],
            "max_tokens": 1,
            "temperature": 0,
        },
        separators=(",", ":"),
        sort_keys=True,  # as Helm's toJson writes it: the chart's probe sends the same bytes
    )


def module(model: str, api_key_file: str | None = None) -> dict[str, Any]:
    http: dict[str, Any] = {
        "method": "POST",
        "headers": {"Content-Type": "application/json", "User-Agent": "vlm-serve-front-door"},
        "body": probe_body(model),
        "valid_status_codes": [200],
        "fail_if_body_not_matches_regexp": ['"choices"'],
        "preferred_ip_protocol": "ip4",
    }
    if api_key_file:
        http["authorization"] = {"type": "Bearer", "credentials_file": api_key_file}
    return {"prober": "http", "timeout": f"{TIMEOUT_S}s", "http": http}


def render(model: str, api_key_file: str | None = None) -> dict[str, Any]:
    return {"modules": {MODULE: module(model, api_key_file)}}


def scrape_job(exporter: str, target: str, interval: str = "10s") -> dict[str, Any]:
    """Prometheus's job: the exporter probes ``target`` (a URL) at each scrape; `up` is the
    exporter's, `probe_success` the request's, and `instance` the probed URL."""
    return {
        "job_name": JOB,
        "metrics_path": "/probe",
        "params": {"module": [MODULE]},
        "scrape_interval": interval,
        # The exporter gives the request this, less half a second, within TIMEOUT_S.
        "scrape_timeout": interval,
        "static_configs": [{"targets": [target]}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": exporter},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--api-key-file", help="a file holding the probe's API key")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(render(args.model, args.api_key_file), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
