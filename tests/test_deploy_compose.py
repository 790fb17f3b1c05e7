"""deploy/compose.yaml (one GPU host) cannot run here: no image can be pulled. Each of its
commands that runs one of our images runs here instead, with host names replaced by
127.0.0.1 and free ports, against this machine's Redis, MariaDB and a cpu-tiny worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localstack.processes import LocalProcess, free_port, nginx_binary, start_gateway
from tests.support.helm import tool_env
from worker.profiles import REPO_ROOT

COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"
GATEWAY_PY = str(REPO_ROOT / ".venv" / "bin" / "python")
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")


def _expand(value: Any) -> Any:
    """Compose's ${NAME:-default}, with every NAME unset."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE.read_text())  # PyYAML applies the << merges
    expanded: dict[str, dict[str, Any]] = _expand(compose["services"])
    return expanded


def test_images_are_pinned_and_volumes_declared(services: dict[str, dict[str, Any]]) -> None:
    declared = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for name, service in services.items():
        assert re.search(r":[v0-9][\w.-]*$", service["image"]), f"{name}: {service['image']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name}: {source}"
            else:
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_gateway_stop_grace_covers_its_drain(services: dict[str, dict[str, Any]]) -> None:
    for name in ("gateway-1", "gateway-2"):
        command = services[name]["command"]
        drain = float(command[command.index("--drain-delay") + 1])
        graceful = float(command[command.index("--graceful-timeout") + 1])
        log_close = 10.0  # GATEWAY_LOG_CLOSE_TIMEOUT_S's default
        assert float(services[name]["stop_grace_period"].rstrip("s")) >= (
            drain + graceful + log_close
        )


def test_migrate_command_runs_against_mariadb(
    services: dict[str, dict[str, Any]], log_database_url: str
) -> None:
    migrate = services["migrate"]
    assert migrate["command"][:3] == ["python3", "-m", "gateway.interactions"]
    env = {**os.environ, "GATEWAY_LOG_DATABASE_URL": log_database_url}
    done = subprocess.run(
        [GATEWAY_PY, *migrate["command"][1:]], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_nginx_config_renders_and_nginx_accepts_it(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    command = services["nginx-config"]["command"]
    assert command[:3] == ["python3", "-m", "nginx.render"]
    hosts = {f"gateway-{i}:8000": f"127.0.0.1:{free_port()}" for i in (1, 2)}
    args = []
    for arg in command[3:]:
        arg = hosts.get(arg, arg)
        arg = arg.replace("/etc/vlm-nginx", str(tmp_path)).replace("/tmp/nginx", str(tmp_path))
        args.append(arg.replace("0.0.0.0:8080", f"127.0.0.1:{free_port()}"))
    subprocess.run([GATEWAY_PY, "-m", "nginx.render", *args], check=True, cwd=tmp_path)
    conf = tmp_path / "nginx.conf"
    assert "client_max_body_size 16777216;" in conf.read_text()
    nginx = services["nginx"]["command"]
    assert nginx[:3] == ["nginx", "-c", "/etc/vlm-nginx/nginx.conf"]
    checked = subprocess.run(
        [nginx_binary(), "-t", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_worker_command_and_healthcheck(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    worker = services["worker-0"]
    command = worker["command"]
    assert command[:4] == ["python3", "-m", "worker", "serve"]
    printed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *command[4:]], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(printed)["profile"]["name"] == "gpu-bf16"
    check = worker["healthcheck"]["test"][1:]
    assert check[:4] == ["python3", "-m", "worker", "ready"]
    ready_file = tmp_path / "worker.ready"
    env = {**os.environ, "WORKER_READY_FILE": str(ready_file)}
    run = [WORKER_PY, *check[1:]]
    assert subprocess.run(run, cwd=REPO_ROOT, env=env, timeout=60, check=False).returncode == 1
    ready_file.write_text("warm")
    assert subprocess.run(run, cwd=REPO_ROOT, env=env, timeout=60, check=False).returncode == 0


def test_gateway_command_with_composes_environment_gets_ready(
    services: dict[str, dict[str, Any]],
    worker_url: str,
    log_database_url: str,
    tmp_path: Path,
) -> None:
    gateway = services["gateway-1"]
    env = dict(gateway["environment"])
    assert set(env) >= {"GATEWAY_WORKER_URLS", "GATEWAY_REDIS_URL", "GATEWAY_LOG_DATABASE_URL"}
    # Compose's host names, as a test must: this machine's Redis, MariaDB and worker.
    env["GATEWAY_REDIS_URL"] = env["GATEWAY_REDIS_URL"].replace("redis:6379", "127.0.0.1:6379")
    env["GATEWAY_LOG_DATABASE_URL"] = log_database_url
    env["GATEWAY_LOG_SPOOL_PATH"] = str(tmp_path / "spool.jsonl")
    env["GATEWAY_CACHE_NAMESPACE"] = f"compose-{free_port()}"
    del env["GATEWAY_WORKER_URLS"]
    command = gateway["command"]
    args = command[command.index("--drain-delay") :]
    process: LocalProcess = start_gateway([worker_url], tmp_path, env=env, args=args)
    try:
        assert process.process.poll() is None
    finally:
        process.stop()
    assert process.process.returncode == 0


def test_prometheus_config_is_the_generated_one_and_promtool_accepts_it(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    committed = yaml.safe_load((COMPOSE.parent / "compose" / "prometheus.yml").read_text())
    generated = tmp_path / "generated.json"
    workers = [s for s in services if s.startswith("worker-")]
    gateways = [s for s in services if s.startswith("gateway-")]
    subprocess.run(
        [GATEWAY_PY, "-m", "deploy.prometheus.config", str(generated),
         *[f"--gateway={g}:8000" for g in gateways], *[f"--worker={w}:8000" for w in workers]],
        check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    fresh = json.loads(generated.read_text())
    assert committed["scrape_configs"] == fresh["scrape_configs"]
    assert committed["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # promtool reads the rules where compose mounts them from.
    local = dict(committed, rule_files=[str(REPO_ROOT / "deploy/prometheus/rules/*.yml")])
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(local))
    done = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True,
        timeout=60, env=tool_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
