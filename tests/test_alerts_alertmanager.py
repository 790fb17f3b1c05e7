"""The shipped Alertmanager example: amtool accepts it and routes pages and tickets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker.profiles import REPO_ROOT

CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    assert binary, "amtool is missing: run `make observe-tools`"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def test_check_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_check_config_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "am.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: oncall-pager", "receiver: nobody"))
    assert amtool("check-config", str(broken)).returncode != 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=VlmNoHealthyWorker"], "oncall-pager"),
        (["severity=warning", "alertname=VlmWorkerDown"], "oncall-tickets"),
        (["alertname=Unlabelled"], "oncall-tickets"),
    ],
)
def test_routes(labels: list[str], receiver: str) -> None:
    result = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}",
        *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
