"""Issue 25: a crashed process leaves no children, `make down` stops whole trees, and
`make up` fails as soon as a process it started exits.

The real engine's tree (API server, engine core, its worker) is checked in
tests/test_upstream_drills.py, where a worker's API server is SIGKILLed under load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from localstack.processes import free_port, process_tree, start_gateway
from worker.launcher import LaunchOptions, run
from worker.profiles import PROFILES, REPO_ROOT

FORKING = str(Path(__file__).parent / "doubles" / "forking_vllm.py")
STACK = REPO_ROOT / "deploy" / "local" / "stack.sh"
PROCESSES = REPO_ROOT / "deploy" / "local" / "processes.sh"


def alive(pid: int) -> bool:
    """Running, or stopped: anything but gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _all_end(pids: Iterable[int], timeout_s: float = 30.0) -> list[int]:
    """The pids still alive after ``timeout_s`` (killed then, so no test leaves them)."""
    deadline = time.monotonic() + timeout_s
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def test_a_killed_worker_server_takes_its_processes_along(tmp_path: Path) -> None:
    """vLLM's engine core and workers outlived a SIGKILLed API server, 2 GB each."""
    port, pids_file = free_port(), tmp_path / "pids"
    killed: list[int] = []

    def kill_the_server() -> None:
        deadline = time.monotonic() + 120
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        killed.extend(int(line) for line in pids_file.read_text().split())
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_server)
    killer.start()
    options = LaunchOptions("127.0.0.1", port, tmp_path / "ready", 60.0, None)
    code = run(PROFILES["cpu-tiny"], options, [sys.executable, FORKING, str(port), str(pids_file)])
    killer.join()
    assert code == -signal.SIGKILL
    assert len(killed) == 4  # the server, a forked child, a spawned one and its child
    assert _all_end(killed[1:]) == []


def test_a_killed_gateway_takes_its_body_parser_along(tmp_path: Path) -> None:
    """The body parser's child and the multiprocessing resource tracker outlived a
    SIGKILLed replica for hours."""
    env = {
        "GATEWAY_AUTH_ENABLED": "false", "GATEWAY_LOG_ENABLED": "false",
        "GATEWAY_CACHE_ENABLED": "false", "GATEWAY_PARSE_PROCESS_WARM": "true",
    }  # fmt: skip
    gateway = start_gateway(
        [f"http://127.0.0.1:{free_port()}"], tmp_path, env=env, ready_path="/healthz"
    )
    try:
        deadline = time.monotonic() + 60
        while len(children := process_tree(gateway.process.pid)[1:]) < 2:  # child, tracker
            assert time.monotonic() < deadline, "the body parser's child never started"
            time.sleep(0.2)
    finally:
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait()
    assert _all_end(children) == []


def _bash(
    script: str, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def test_make_down_stops_a_tree_whose_leader_is_dead(tmp_path: Path) -> None:
    """`stop` signalled a recorded group only while its leader lived: a crashed leader's
    children were left running."""
    env = {"PID_DIR": str(tmp_path / "pids"), "LOG_DIR": str(tmp_path / "logs")}
    for folder in env.values():
        Path(folder).mkdir()
    # As `start` starts it (a group of its own), but a child of this process, so that the
    # crashed leader is reaped at once, as an init process does.
    leader = subprocess.Popen(["setsid", "bash", "-c", "sleep 300 & sleep 300 & wait"])
    (tmp_path / "pids" / "tree.pid").write_text(str(leader.pid))
    deadline = time.monotonic() + 30
    while len(tree := process_tree(leader.pid)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    leader.kill()  # a crash: its children are orphans now
    leader.wait()
    stopped = _bash(f"source {PROCESSES} && stop tree", env)
    assert stopped.returncode == 0, stopped.stderr
    assert _all_end(tree[1:], timeout_s=5) == []


def test_make_up_fails_as_soon_as_a_process_it_started_exits(
    tmp_path: Path, log_database_url: str
) -> None:
    """A mistyped profile: every worker exits at once with a usage error, and `make up`
    sat silent for its whole start-up timeout (15 minutes)."""
    env = {
        "RUN_DIR": str(tmp_path / "run"), "PROFILE": "cpu-tinyy", "WORKERS": "1",
        "WORKER_PORT": str(free_port()), "GATEWAY_BASE_PORT": str(free_port()),
        "PORT": str(free_port()), "NGINX_STATUS_PORT": str(free_port()),
        "GATEWAY_LOG_DATABASE_URL": log_database_url, "STARTUP_TIMEOUT": "900",
    }  # fmt: skip
    try:
        up = subprocess.run(
            [str(STACK), "up"], cwd=REPO_ROOT, env={**os.environ, **env},
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        subprocess.run([str(STACK), "down"], cwd=REPO_ROOT, env={**os.environ, **env},
                       capture_output=True, timeout=120, check=False)  # fmt: skip
    assert up.returncode != 0
    worker = f"worker-{env['WORKER_PORT']}"
    assert f"{worker} exited" in up.stderr
    # The end of its log, where the reason is.
    assert "invalid choice: 'cpu-tinyy'" in up.stderr
    assert "timed out" not in up.stderr
