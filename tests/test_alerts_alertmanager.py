"""The shipped Alertmanager example: amtool accepts it and routes pages, tickets and the
Watchdog's heartbeat; a real Alertmanager with it lets one page through per incident
(inhibition), per release."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localstack import observers
from localstack.processes import LocalProcess
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
        (["alertname=Watchdog", "severity=none"], "heartbeat"),
    ],
)
def test_routes(labels: list[str], receiver: str) -> None:
    result = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}",
        *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    webhook = observers.WebhookReceiver()
    webhook.start()
    proc = observers.start_alertmanager(tmp_path_factory.mktemp("am"), webhook.url)
    try:
        yield proc
    finally:
        proc.stop(timeout=10)
        webhook.stop()


def _post(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _active(url: str, namespace: str) -> set[str]:
    """Alert names of ``namespace`` that are neither inhibited nor silenced."""
    query = (
        f"{url}/api/v2/alerts?inhibited=false&silenced=false&filter=namespace%3D%22{namespace}%22"
    )
    with urllib.request.urlopen(query, timeout=10) as response:
        return {alert["labels"]["alertname"] for alert in json.load(response)}


def _alert(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    base = {"alertname": name, "namespace": namespace, "release": "vlm", "severity": "warning"}
    return {"labels": {**base, **labels}, "annotations": {"summary": name}}


@pytest.mark.parametrize(
    ("incident", "fan_out"),
    [
        # Redis down: every replica's limiter fails open, the hit ratio collapses.
        ("VlmRedisBreakerOpen", ["VlmRateLimiterFailingOpen", "VlmCacheHitRatioCollapsed"]),
        # MariaDB down: the spools grow and age.
        ("VlmInteractionDbDown", ["VlmInteractionSpoolGrowing", "VlmInteractionSpoolStale"]),
        # No worker reachable: the pools, the front door and the SLOs say it again.
        (
            "VlmNoReachableWorker",
            ["VlmPoolWithoutHealthyWorker", "VlmWorkerEjected", "VlmAvailabilityBudgetBurnFast"],
        ),
        # The front door fails: the availability SLO burns because of it.
        ("VlmFrontDoorDown", ["VlmAvailabilityBudgetBurnFast", "VlmTtftBudgetBurnFast"]),
    ],
)
def test_one_incident_pages_once_per_release(
    alertmanager: LocalProcess, incident: str, fan_out: list[str]
) -> None:
    prod, staging = f"prod-{incident.lower()}", f"staging-{incident.lower()}"
    cause = [_alert(incident, prod, severity="critical")]
    effects = [_alert(name, ns, slo="availability") for name in fan_out for ns in (prod, staging)]
    _post(alertmanager.url, cause + effects)
    deadline = time.monotonic() + 10
    while _active(alertmanager.url, prod) != {incident} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _active(alertmanager.url, prod) == {incident}
    # The same alerts in another release are another incident: nothing hides them.
    assert _active(alertmanager.url, staging) == set(fan_out)


def test_a_fast_burn_hides_the_slow_burn_of_the_same_slo(alertmanager: LocalProcess) -> None:
    ns = "prod-burn"
    _post(
        alertmanager.url,
        [
            _alert("VlmTtftBudgetBurnFast", ns, slo="ttft", route="/v1/chat/completions"),
            _alert("VlmTtftBudgetBurnSlow", ns, slo="ttft", route="/v1/chat/completions"),
            _alert("VlmAnswerLatencyBudgetBurnSlow", ns, slo="answer_latency", route="/v1/vqa"),
        ],
    )
    deadline = time.monotonic() + 10
    expected = {"VlmTtftBudgetBurnFast", "VlmAnswerLatencyBudgetBurnSlow"}
    while _active(alertmanager.url, ns) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _active(alertmanager.url, ns) == expected
