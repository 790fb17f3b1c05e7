"""Start and stop a local worker process (tests, benchmarks, the local stack).

It goes through the same launcher as `make worker`, so "ready" means warmed up.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from worker.profiles import REPO_ROOT

WORKER_PYTHON = REPO_ROOT / ".venv-worker" / "bin" / "python"


class WorkerStartError(RuntimeError):
    pass


@dataclass
class LocalWorker:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_worker(
    port: int,
    log_dir: Path,
    profile: str = "cpu-tiny",
    timeout_s: float = 600.0,
    extra_env: dict[str, str] | None = None,
) -> LocalWorker:
    """Start `python -m worker serve` and return once its ready file exists."""
    if not WORKER_PYTHON.exists():
        raise WorkerStartError("the worker environment is missing: run `make install`")
    log_dir.mkdir(parents=True, exist_ok=True)
    ready_file = log_dir / f"worker-{port}.ready"
    log_path = log_dir / f"worker-{port}.log"
    env = {**os.environ, **(extra_env or {}), "WORKER_READY_FILE": str(ready_file)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(WORKER_PYTHON), "-m", "worker", "serve", "--profile", profile,
             "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    worker = LocalWorker(process, port, log_path)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise WorkerStartError(f"worker exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            worker.stop()
            raise WorkerStartError(f"worker not ready after {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.5)
    return worker
