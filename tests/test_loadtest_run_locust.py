"""run_locust's pieces that need no Locust run: durations, the command, the thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.locust.run import (
    LOCUSTFILE,
    Thresholds,
    check_thresholds,
    locust_command,
    main,
    parse_duration,
)
from localstack.processes import free_port


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("60s", 60), ("2m", 120), ("1h30m", 5400), ("1m5s", 65)]
)
def test_durations_parse_like_locust(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "fast", "5x", "-3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def _summary(requests: int, failures: int, p95: float | None, ttft: float | None = None) -> Any:
    return {
        "http": {"requests": requests, "failures": failures, "p95_ms": p95},
        "ttft": {"requests": 1, "p95_ms": ttft},
    }


def test_thresholds_pass_and_fail_on_error_rate_and_p95() -> None:
    limits = Thresholds(max_error_rate=0.01, max_p95_ms=1000, max_ttft_p95_ms=300)
    passing = check_thresholds(_summary(200, 2, 900, ttft=250), limits)
    assert [c.met for c in passing] == [True, True, True, True]

    errors = check_thresholds(_summary(200, 3, 900, ttft=250), limits)
    assert [c.name for c in errors if not c.met] == ["HTTP error rate"]

    slow = check_thresholds(_summary(200, 0, 1500, ttft=400), limits)
    assert [c.name for c in slow if not c.met] == ["HTTP p95 response time", "streamed TTFT p95"]


def test_a_run_without_completed_requests_fails() -> None:
    checks = check_thresholds(_summary(0, 0, None), Thresholds())
    assert not any(c.met for c in checks)
    assert len(checks) == 3  # no TTFT limit asked for


def test_the_locust_command_is_headless_timed_and_writes_reports(tmp_path: Path) -> None:
    class Args:
        host = "http://127.0.0.1:8080"
        users = 8
        spawn_rate = 2.0
        duration = "2m"
        stop_timeout = 30
        out = tmp_path
        progress = False

    command = locust_command(Args(), ["--repeat-share", "0.5"])  # type: ignore[arg-type]

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("-f") == str(LOCUSTFILE)
    assert "--headless" in command
    assert "--only-summary" in command
    assert value("--run-time") == "120s"
    assert value("--csv") == str(tmp_path / "locust")
    assert value("--html") == str(tmp_path / "report.html")
    assert value("--summary-json") == str(tmp_path / "summary.json")
    assert value("--exit-code-on-error") == "0"
    assert command[-2:] == ["--repeat-share", "0.5"]


def test_an_unready_host_exits_3_without_running_locust(tmp_path: Path) -> None:
    # A port just found free: nothing listens there, the connection is refused at once.
    host = f"http://127.0.0.1:{free_port()}"
    code = main(["--host", host, "--ready-timeout", "0", "--out", str(tmp_path)])
    assert code == 3
    assert not (tmp_path / "summary.json").exists()
