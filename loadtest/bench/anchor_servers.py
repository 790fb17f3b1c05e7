"""The anchors our gateway is measured against, each installed by the benchmark into a
virtual environment of its own and started on free ports:

* ``vllm-router`` (vLLM's Rust router, PyPI), round robin over one worker;
* the LiteLLM proxy (``litellm[proxy]``), with a master key (it refuses to start without
  one), optionally with its Redis answer cache;
* Nginx answering every chat request with one static JSON file: the ceiling for hits.

Their pins conflict with the gateway's and with vLLM's, hence ``.venv-router`` and
``.venv-litellm`` (ignored by git, ruff and mypy). A stamp file keeps a second run fast.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from localstack.processes import LocalProcess, free_port, nginx_binary, wait_http_ok
from worker.profiles import REPO_ROOT

ROUTER_VENV = REPO_ROOT / ".venv-router"
LITELLM_VENV = REPO_ROOT / ".venv-litellm"
ROUTER_REQUIREMENT = "vllm-router==0.1.17"
LITELLM_REQUIREMENT = "litellm[proxy]==1.106.12"


def ensure_venv(venv: Path, requirement: str) -> Path:
    """``venv`` with ``requirement`` installed (once: the stamp names the requirement)."""
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text().strip() == requirement:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--disable-pip-version-check", requirement], check=True)
    stamp.write_text(requirement + "\n")
    return venv


def _spawn(
    name: str, cmd: list[str], log_dir: Path, env: dict[str, str], port: int
) -> LocalProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    return LocalProcess(name, process, port, log_path)


def start_router(worker_url: str, log_dir: Path) -> LocalProcess:
    """vLLM's Rust router, round robin, in front of ``worker_url``."""
    ensure_venv(ROUTER_VENV, ROUTER_REQUIREMENT)
    port = free_port()
    cmd = [
        str(ROUTER_VENV / "bin" / "vllm-router"),
        "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", worker_url,
        "--policy", "round_robin",
        "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    router = _spawn("vllm-router", cmd, log_dir, dict(os.environ), port)
    wait_http_ok(router, "/v1/models", timeout_s=120)
    return router


def start_litellm(
    worker_url: str,
    model: str,
    log_dir: Path,
    redis_namespace: str | None = None,
    redis_port: int = 6379,
) -> tuple[LocalProcess, str]:
    """The LiteLLM proxy (one worker process) for ``model`` on ``worker_url``; with
    ``redis_namespace``, its Redis answer cache on. Returns the process and its master key."""
    ensure_venv(LITELLM_VENV, LITELLM_REQUIREMENT)
    port = free_port()
    master_key = "sk-" + secrets.token_hex(16)
    config: dict[str, object] = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"hosted_vllm/{model}",
                    "api_base": f"{worker_url}/v1",
                    "api_key": "none",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
    }
    if redis_namespace is not None:
        config["litellm_settings"] = {
            "cache": True,
            "cache_params": {
                "type": "redis",
                "host": "127.0.0.1",
                "port": redis_port,
                "namespace": redis_namespace,
            },
        }
    name = "litellm-cache" if redis_namespace else "litellm"
    log_dir.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: no YAML writer needed in the gateway's environment.
    config_path = log_dir / f"{name}.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": master_key,
        # No network: the bundled model cost map, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    cmd = [
        str(LITELLM_VENV / "bin" / "litellm"),
        "--config", str(config_path),
        "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    proxy = _spawn(name, cmd, log_dir, env, port)
    wait_http_ok(proxy, "/health/liveliness", timeout_s=300)
    return proxy, master_key


_STATIC_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 16m;
        client_body_buffer_size 1m;
        location = /readyz {{ return 200 "ok"; }}
        # The static module refuses POST with 405; error_page turns that into a GET of the
        # file, so every chat request gets the same stored answer.
        location = /v1/chat/completions {{
            root {dir};
            try_files /answer.json =404;
            error_page 405 =200 /answer.json;
        }}
        location = /answer.json {{
            internal;
            root {dir};
            default_type application/json;
        }}
    }}
}}
"""


def start_static_nginx(answer: bytes, run_dir: Path) -> LocalProcess:
    """Nginx answering POST /v1/chat/completions with ``answer``: the hit ceiling."""
    port = free_port()
    conf_dir = run_dir.resolve() / f"nginx-static-{port}"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (conf_dir / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "answer.json").write_bytes(answer)
    conf = conf_dir / "nginx.conf"
    conf.write_text(_STATIC_CONF.format(dir=conf_dir, port=port))
    cmd = [nginx_binary(), "-c", str(conf), "-e", str(conf_dir / "error.log"), "-g", "daemon off;"]
    nginx = _spawn(f"nginx-static-{port}", cmd, run_dir, dict(os.environ), port)
    wait_http_ok(nginx, "/readyz", timeout_s=30)
    return nginx
