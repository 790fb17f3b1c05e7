"""The launcher's readiness gate, with a server double that fails warm-up on cue.

The real engine's readiness is covered by the session worker fixture, which
waits for the ready file of a real vLLM worker (tests/test_worker_engine.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localstack.processes import free_port
from worker.launcher import LaunchOptions, run
from worker.profiles import PROFILES, REPO_ROOT

FAKE = str(Path(__file__).parent / "doubles" / "fake_vllm.py")


def _options(tmp_path: Path, port: int) -> LaunchOptions:
    return LaunchOptions("127.0.0.1", port, tmp_path / "ready", 20.0, None)


def test_worker_becomes_ready_only_after_an_answered_warm_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    code = run(
        PROFILES["cpu-tiny"], _options(tmp_path, port), [sys.executable, FAKE, str(port), "ok"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "ready on http://127.0.0.1:" in out
    assert not (tmp_path / "ready").exists(), "the ready file must go when the server exits"


def test_failed_warm_up_never_marks_ready_and_stops_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    code = run(
        PROFILES["cpu-tiny"], _options(tmp_path, port), [sys.executable, FAKE, str(port), "fail"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "warm-up failed" in out
    assert "ready on" not in out
    assert not (tmp_path / "ready").exists()


def test_server_that_exits_during_start_up_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        PROFILES["cpu-tiny"],
        _options(tmp_path, free_port()),
        [sys.executable, "-c", "raise SystemExit(3)"],
    )
    assert code == 3
    assert "exited with 3" in capsys.readouterr().out


def test_ready_command_reflects_the_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "r.ready"
    env = {"WORKER_READY_FILE": str(ready), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "worker", "ready", "--port", "1"]
    assert subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False).returncode == 1
    ready.write_text("now")
    assert subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False).returncode == 0


def test_a_port_already_in_use_is_refused_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another server on the port would answer the health check and warm-up for us."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(
            PROFILES["cpu-tiny"], _options(tmp_path, port), [sys.executable, FAKE, str(port), "ok"]
        )
    assert code == 1
    assert "already in use" in capsys.readouterr().out
    assert not (tmp_path / "ready").exists()


def test_triton_drains_for_the_charts_shutdown_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart sets WORKER_SHUTDOWN_TIMEOUT_S from its drain values (the pod's grace
    period is sized on it): Triton lets running requests finish that long after SIGTERM,
    not a fixed 30 s that the kubelet's SIGKILL or an early exit would contradict."""
    from worker.__main__ import triton_options
    from worker.profiles import resolve_profile
    from worker.triton import launcher
    from worker.triton.launcher import command

    # The server's path is beside the point (and .venv-triton's wheel is not in this one).
    monkeypatch.setattr(launcher, "pytriton_dir", lambda: tmp_path)
    monkeypatch.setattr(launcher, "backend_directory", lambda: tmp_path)
    options = _options(tmp_path, 8000)
    monkeypatch.setenv("WORKER_SHUTDOWN_TIMEOUT_S", "95")
    drained = triton_options(resolve_profile("triton-cpu-tiny", dict(os.environ)), options)
    assert "--exit-timeout-secs=95" in command(drained, tmp_path)
    monkeypatch.delenv("WORKER_SHUTDOWN_TIMEOUT_S")
    default = triton_options(resolve_profile("triton-cpu-tiny", dict(os.environ)), options)
    assert "--exit-timeout-secs=30" in command(default, tmp_path)
