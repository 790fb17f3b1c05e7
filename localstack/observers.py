"""Prometheus, Alertmanager, the exporters (the front door's blackbox probe and mtail on
Nginx's access log among them) and a webhook receiver on free loopback ports, each with
its own data directory: what the live observability test starts and stops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from deploy.prometheus import blackbox
from deploy.prometheus.check import rule_files
from deploy.prometheus.config import Targets, render
from localstack.processes import LocalProcess, StartError, free_port
from worker.profiles import REPO_ROOT

ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
MTAIL_PROGRAMS = REPO_ROOT / "deploy" / "prometheus" / "mtail"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StartError(f"{name} is missing: run `make observe-tools`")
    return found


def _start(
    name: str, cmd: list[str], directory: Path, port: int, env: dict[str, str] | None = None
) -> LocalProcess:
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd,
            cwd=directory,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return LocalProcess(name, process, port, log_path)


def wait_ready(proc: LocalProcess, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise StartError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    proc.stop()
    raise StartError(f"{proc.name}: {url} not ready after {timeout_s:.0f}s:\n{proc.log_tail()}")


def _start_exporter(
    name: str,
    directory: Path,
    args: list[str],
    listen_flag: str,
    env: dict[str, str] | None = None,
) -> LocalProcess:
    """One exporter from its Debian package, on a free loopback port, once it serves."""
    port = free_port()
    command = [binary(f"prometheus-{name}"), *args, f"{listen_flag}=127.0.0.1:{port}"]
    proc = _start(name, command, directory, port, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}/metrics")
    return proc


def start_nginx_exporter(directory: Path, status_url: str) -> LocalProcess:
    return _start_exporter(
        "nginx-exporter", directory, ["-nginx.scrape-uri", status_url], "-web.listen-address"
    )


def start_redis_exporter(directory: Path, redis_url: str) -> LocalProcess:
    return _start_exporter(
        "redis-exporter", directory, ["-redis.addr", redis_url], "-web.listen-address"
    )


def start_mysqld_exporter(directory: Path, mysql_port: int) -> LocalProcess:
    return _start_exporter(
        "mysqld-exporter",
        directory,
        ["--collect.slave_status"],
        "--web.listen-address",
        env={"DATA_SOURCE_NAME": f"root:@(127.0.0.1:{mysql_port})/"},
    )


def start_blackbox_exporter(
    directory: Path, model: str, api_key_file: Path | None = None
) -> LocalProcess:
    """Debian's blackbox exporter with the front-door module (deploy/prometheus/blackbox.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "blackbox.yml"
    key = str(api_key_file) if api_key_file else None
    config.write_text(json.dumps(blackbox.render(model, key)))
    return _start_exporter(
        "blackbox-exporter", directory, [f"--config.file={config}"], "--web.listen-address"
    )


def start_mtail(directory: Path, access_log: Path) -> LocalProcess:
    """mtail (Debian) with the front door's program, tailing Nginx's JSON access log from its
    end: counts start with the lines written after it."""
    port = free_port()
    command = [
        binary("mtail"), "-progs", str(MTAIL_PROGRAMS), "-logs", str(access_log),
        "-address", "127.0.0.1", "-port", str(port), "-logtostderr",
    ]  # fmt: skip
    proc = _start("mtail", command, directory, port)
    wait_ready(proc, f"http://127.0.0.1:{port}/metrics")
    return proc


def _seconds(duration: str) -> float:
    return float(duration[:-1]) * _UNITS[duration[-1]]


def scaled_rules(directory: Path, factor: float) -> list[Path]:
    """Copies of the shipped rules with every `for:` and group interval divided by
    ``factor`` (at least 1 s): a live drill sees the same expressions page sooner. The
    shipped durations are what the promtool tests check."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in rule_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            if "interval" in group:
                group["interval"] = f"{max(1, round(_seconds(group['interval']) / factor))}s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = f"{max(1, round(_seconds(rule['for']) / factor))}s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    return copies


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The shipped example, its receivers pointed at ``webhook_url`` and its waits short."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url + "/" + receiver["name"]
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        route.update({"group_wait": "1s", "group_interval": "2s"})
    return config


def start_alertmanager(directory: Path, webhook_url: str) -> LocalProcess:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    proc = _start(
        "alertmanager",
        [binary("prometheus-alertmanager"), f"--config.file={config}",
         f"--storage.path={directory / 'am-data'}", "--cluster.listen-address=",
         f"--web.listen-address=127.0.0.1:{port}"],
        directory,
        port,
    )  # fmt: skip
    wait_ready(proc, f"http://127.0.0.1:{port}/-/ready")
    return proc


def start_prometheus(
    directory: Path, targets: Targets, interval: str = "1s", rules: list[Path] | None = None
) -> LocalProcess:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(json.dumps(render(targets, interval, interval, rules)))
    proc = _start(
        "prometheus",
        [binary("prometheus"), f"--config.file={config}",
         f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         # Firing alerts are sent again this often: one that fired before Alertmanager was
         # discovered (the Watchdog, at the first evaluation) is not a minute late.
         "--rules.alert.resend-delay=2s"],
        directory,
        port,
    )  # fmt: skip
    wait_ready(proc, f"http://127.0.0.1:{port}/-/ready")
    return proc


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector (raises on a query Prometheus refuses)."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise ValueError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@dataclass
class WebhookReceiver:
    """A local HTTP server recording what Alertmanager posts to it."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                received.append({"path": self.path, **body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """(post, alert) pairs for alerts of that name posted as firing."""
        return [
            {"receiver": post["receiver"], "path": post["path"], **alert}
            for post in list(self.posts)
            for alert in post["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == "firing"
        ]
