"""prometheus.yml for a local stack: gateways, workers (with their pool), exporters, the
front door.

python -m deploy.prometheus.config OUT --gateway 127.0.0.1:8001 \
    --worker 127.0.0.1:8100 --worker canary=127.0.0.1:8101 \
    --triton-worker triton=127.0.0.1:8202 \
    --nginx-exporter 127.0.0.1:9113 --alertmanager 127.0.0.1:9093 \
    --blackbox-exporter 127.0.0.1:9115 --front-door http://127.0.0.1:8080/v1/chat/completions \
    --front-door-log 127.0.0.1:3903

Job names are what the rules and dashboards select on: gateway, vllm-worker,
triton-worker (Triton's own metrics port, as the chart's ServiceMonitor names it), nginx,
redis, mysql, front-door (the blackbox probe), front-door-log (mtail on Nginx's access
log), batch-runner. A worker given as POOL=ADDRESS carries label pool=POOL (default
"default", as the gateway labels a worker outside any named pool). The output is JSON,
which is YAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.prometheus import blackbox
from deploy.prometheus.check import rule_files

DEFAULT_POOL = "default"


@dataclass
class Targets:
    gateways: list[str]
    workers: list[tuple[str, str]]  # (address, pool)
    # Triton workers: (their metrics port's address, pool).
    triton_workers: list[tuple[str, str]] = field(default_factory=list)
    nginx_exporter: str | None = None
    redis_exporter: str | None = None
    mysqld_exporter: str | None = None
    alertmanagers: list[str] = field(default_factory=list)
    # The front door: the blackbox exporter, the URL it sends a real request to, and mtail
    # reading Nginx's access log.
    blackbox_exporter: str | None = None
    front_door: str | None = None
    front_door_log: str | None = None
    probe_interval: str = "10s"
    batch_runners: list[str] = field(default_factory=list)


def parse_worker(spec: str) -> tuple[str, str]:
    """ "ADDRESS" or "POOL=ADDRESS" -> (address, pool)."""
    pool, sep, address = spec.rpartition("=")
    return (address, pool) if sep else (spec, DEFAULT_POOL)


def _pool_job(name: str, workers: list[tuple[str, str]]) -> dict[str, Any]:
    """One job over workers of several pools: each pool's targets carry its label."""
    pools: dict[str, list[str]] = {}
    for address, pool in workers:
        pools.setdefault(pool, []).append(address)
    return {
        "job_name": name,
        "static_configs": [
            {"targets": addresses, "labels": {"pool": pool}} for pool, addresses in pools.items()
        ],
    }


def _job(name: str, targets: list[str], **labels: str) -> dict[str, Any]:
    group: dict[str, Any] = {"targets": targets}
    if labels:
        group["labels"] = labels
    return {"job_name": name, "static_configs": [group]}


def render(
    targets: Targets,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rules: list[Path] | None = None,
) -> dict[str, Any]:
    jobs = [_job("gateway", targets.gateways), _pool_job("vllm-worker", targets.workers)]
    if targets.triton_workers:
        jobs.append(_pool_job("triton-worker", targets.triton_workers))
    exporters: tuple[tuple[str, str | None], ...] = (
        ("nginx", targets.nginx_exporter),
        ("redis", targets.redis_exporter),
        ("mysql", targets.mysqld_exporter),
    )
    for name, exporter in exporters:
        if exporter:
            jobs.append(_job(name, [exporter]))
    if targets.blackbox_exporter and targets.front_door:
        jobs.append(
            blackbox.scrape_job(
                targets.blackbox_exporter, targets.front_door, targets.probe_interval
            )
        )
    if targets.front_door_log:
        jobs.append(_job("front-door-log", [targets.front_door_log]))
    if targets.batch_runners:
        jobs.append(_job("batch-runner", targets.batch_runners))
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [
            str(path.resolve()) for path in (rules if rules is not None else rule_files())
        ],
        "scrape_configs": jobs,
    }
    if targets.alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": targets.alertmanagers}]}]
        }
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--gateway", action="append", default=[])
    parser.add_argument("--worker", action="append", default=[], help="ADDRESS or POOL=ADDRESS")
    parser.add_argument(
        "--triton-worker",
        action="append",
        default=[],
        help="a Triton worker's metrics port: ADDRESS or POOL=ADDRESS",
    )
    parser.add_argument("--nginx-exporter")
    parser.add_argument("--redis-exporter")
    parser.add_argument("--mysqld-exporter")
    parser.add_argument("--alertmanager", action="append", default=[])
    parser.add_argument("--blackbox-exporter", help="the exporter that probes the front door")
    parser.add_argument("--front-door", help="the URL it probes (through Nginx)")
    parser.add_argument("--front-door-log", help="mtail reading Nginx's access log")
    parser.add_argument("--batch-runner", action="append", default=[])
    parser.add_argument("--scrape-interval", default="15s")
    parser.add_argument("--evaluation-interval", default="15s")
    args = parser.parse_args(argv)
    targets = Targets(
        gateways=args.gateway,
        workers=[parse_worker(spec) for spec in args.worker],
        triton_workers=[parse_worker(spec) for spec in args.triton_worker],
        nginx_exporter=args.nginx_exporter,
        redis_exporter=args.redis_exporter,
        mysqld_exporter=args.mysqld_exporter,
        alertmanagers=args.alertmanager,
        blackbox_exporter=args.blackbox_exporter,
        front_door=args.front_door,
        front_door_log=args.front_door_log,
        batch_runners=args.batch_runner,
    )
    config = render(targets, args.scrape_interval, args.evaluation_interval)
    args.out.write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
