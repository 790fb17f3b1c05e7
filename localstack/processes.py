"""Worker, gateway and Nginx processes on free ports, stopped by their handles."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nginx.render import render
from worker.profiles import REPO_ROOT

GATEWAY_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
WORKER_PYTHON = REPO_ROOT / ".venv-worker" / "bin" / "python"
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"  # triton-* profiles


# For gateways started by benchmarks that measure something else: API keys off, said
# explicitly (the gateway requires keys by default).
NO_AUTH: dict[str, str] = {"GATEWAY_AUTH_ENABLED": "false"}


class StartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it and its whole tree: SIGTERM (it stops its own children), then SIGKILL
        for whatever is left of the tree it had."""
        descendants = identities(process_tree(self.process.pid)[1:])
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        end_processes(descendants, timeout)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (a worker is its launcher, vLLM's API
    server and the engine core)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _started(pid: int) -> str | None:
    """When a running process started (its identity beside a pid the system may reuse);
    None when it has ended (a zombie has)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def identities(pids: list[int]) -> dict[int, str]:
    """The running ones of ``pids``, each with when it started."""
    return {pid: when for pid in pids if (when := _started(pid)) is not None}


def end_processes(started: dict[int, str], timeout: float = 30.0) -> None:
    """SIGTERM the processes (``identities``) still running, then SIGKILL those left after
    ``timeout``; a pid the system gave to a new process meanwhile is left alone."""

    def left() -> list[int]:
        return [pid for pid, when in started.items() if _started(pid) == when]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)


def signal_tree(process: LocalProcess, sig: signal.Signals) -> None:
    """Send sig to the process and every descendant (drills: SIGKILL, SIGSTOP, SIGCONT)."""
    for pid in process_tree(process.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _spawn(
    name: str, cmd: list[str], log_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return process, log_path


def wait_http_ok(proc: LocalProcess, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise StartError(
                f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(proc.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    proc.stop()
    raise StartError(f"{proc.name}: {path} not 200 after {timeout_s:.0f}s:\n{proc.log_tail()}")


def start_worker(
    log_dir: Path,
    port: int | None = None,
    profile: str = "cpu-tiny",
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> LocalProcess:
    """`python -m worker serve`, returned once the launcher's warm-up marked it ready."""
    python = TRITON_PYTHON if profile.startswith("triton-") else WORKER_PYTHON
    if not python.exists():
        raise StartError(f"the worker environment is missing ({python}): run `make install`")
    port = port or free_port()
    ready_file = log_dir / f"worker-{port}.ready"
    ready_file.unlink(missing_ok=True)
    full_env = {**os.environ, **(env or {}), "WORKER_READY_FILE": str(ready_file)}
    cmd = [str(python), "-m", "worker", "serve", "--profile", profile, "--port", str(port)]
    process, log_path = _spawn(f"worker-{port}", cmd, log_dir, full_env)
    worker = LocalProcess(f"worker-{port}", process, port, log_path)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if process.poll() is not None:
            raise StartError(f"worker exited with {process.returncode}:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            worker.stop()
            raise StartError(f"worker not ready after {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.5)
    return worker


def start_gateway(
    worker_urls: list[str],
    log_dir: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    timeout_s: float = 60.0,
    args: list[str] | None = None,
) -> LocalProcess:
    """`python -m gateway` on a port of its own, returned once ready_path answers 200.

    ``args`` are extra command-line options (``--graceful-timeout``, ``--drain-delay``)."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "GATEWAY_WORKER_URLS": ",".join(worker_urls),
        # One spool per process: the writer locks its spool file.
        "GATEWAY_LOG_SPOOL_PATH": str(log_dir.resolve() / f"spool-{port}.jsonl"),
        **(env or {}),
    }
    cmd = [str(GATEWAY_PYTHON), "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    cmd += args or []
    process, log_path = _spawn(f"gateway-{port}", cmd, log_dir, full_env)
    gateway = LocalProcess(f"gateway-{port}", process, port, log_path)
    wait_http_ok(gateway, ready_path, timeout_s)
    return gateway


def start_batch_runner(
    gateway_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    metrics_port: int | None = None,
    timeout_s: float = 30.0,
) -> LocalProcess:
    """`python -m gateway.batch` feeding ``gateway_url``, returned once its /metrics answers
    (its port is the metrics port). GATEWAY_BATCH_RUNNER_TOKEN must be in ``env``."""
    port = metrics_port or free_port()
    full_env = {
        **os.environ,
        "GATEWAY_BATCH_GATEWAY_URL": gateway_url,
        "GATEWAY_BATCH_METRICS_PORT": str(port),
        **(env or {}),
    }
    cmd = [str(GATEWAY_PYTHON), "-m", "gateway.batch"]
    process, log_path = _spawn(f"batch-runner-{port}", cmd, log_dir, full_env)
    runner = LocalProcess(f"batch-runner-{port}", process, port, log_path)
    wait_http_ok(runner, "/metrics", timeout_s)
    return runner


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise StartError("nginx is not installed: run `make install`")
    return found


def start_nginx(
    upstreams: list[str],
    run_dir: Path,
    port: int | None = None,
    max_body_bytes: int = 16 * 1024 * 1024,
    read_timeout_s: int = 610,
    ready_path: str = "/readyz",
    timeout_s: float = 30.0,
    client_body_timeout_s: int = 30,
    status_port: int | None = None,
) -> LocalProcess:
    """Nginx from our template in front of upstreams ("127.0.0.1:PORT"), in the foreground;
    with ``status_port``, stub_status on a port of its own (for the Prometheus exporter)."""
    port = port or free_port()
    conf_dir = run_dir.resolve() / f"nginx-{port}"  # nginx resolves relative paths elsewhere
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (conf_dir / sub).mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(
        render(
            f"127.0.0.1:{port}", upstreams, conf_dir, conf_dir, max_body_bytes, read_timeout_s,
            client_body_timeout_s=client_body_timeout_s,
            status_listen=f"127.0.0.1:{status_port}" if status_port else None,
        )
    )  # fmt: skip
    error_log = conf_dir / "nginx-error.log"
    cmd = [nginx_binary(), "-c", str(conf), "-e", str(error_log), "-g", "daemon off;"]
    process, log_path = _spawn(f"nginx-{port}", cmd, run_dir, dict(os.environ))
    nginx = LocalProcess(f"nginx-{port}", process, port, log_path)
    wait_http_ok(nginx, ready_path, timeout_s)
    return nginx
