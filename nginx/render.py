"""Render nginx/nginx.conf.template for the local stack.

python nginx/render.py OUT --listen 127.0.0.1:8080 --gateway 127.0.0.1:8001 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def render(
    listen: str,
    gateways: list[str],
    run_dir: Path,
    log_dir: Path,
    max_body_bytes: int,
    read_timeout_s: int,
    worker_processes: int = 1,
    client_body_timeout_s: int = 30,
    status_listen: str | None = None,
) -> str:
    # Passive health: a replica that fails 3 times in 10 s rests for 10 s.
    upstream = "\n".join(
        f"        server {address} max_fails=3 fail_timeout=10s;" for address in gateways
    )
    values = {
        "NGINX_WORKER_PROCESSES": str(worker_processes),
        "NGINX_RUN_DIR": str(run_dir.resolve()),
        "NGINX_LOG_DIR": str(log_dir.resolve()),
        "NGINX_UPSTREAM_SERVERS": upstream,
        "NGINX_LISTEN": listen,
        "NGINX_MAX_BODY_BYTES": str(max_body_bytes),
        "NGINX_READ_TIMEOUT": f"{read_timeout_s}s",
        "NGINX_CLIENT_BODY_TIMEOUT": f"{client_body_timeout_s}s",
    }
    # safe_substitute: nginx's own $variables stay as they are.
    conf = Template(TEMPLATE.read_text()).safe_substitute(values)
    return conf if status_listen is None else with_status_server(conf, status_listen)


def with_status_server(conf: str, listen: str) -> str:
    """Add a server answering only stub_status (for the Prometheus exporter) on a port of
    its own, so the public port never serves it. Local renders only: the Helm chart
    renders the template itself and keeps /nginx_status on its main port."""
    body, closing = conf.rstrip().rsplit("}", 1)
    server = (
        "\n    server {\n"
        f"        listen {listen};\n"
        "        access_log off;\n"
        "        location = /stub_status {\n"
        "            stub_status;\n"
        "            allow 127.0.0.1;\n"
        "            deny all;\n"
        "        }\n"
        "        location / {\n"
        "            return 404;\n"
        "        }\n"
        "    }\n"
    )
    return body + server + "}" + closing + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("out", type=Path)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--gateway", action="append", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--max-body-bytes", type=int, required=True)
    parser.add_argument("--read-timeout", type=int, default=330)
    parser.add_argument("--status-listen", help="address of a stub_status-only server")
    args = parser.parse_args(argv)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (args.run_dir / sub).mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(args.listen, args.gateway, args.run_dir, args.log_dir,
               args.max_body_bytes, args.read_timeout, status_listen=args.status_listen)
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
