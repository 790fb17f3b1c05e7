"""The chart's batch runner (templates/batch-runner.yaml): a Deployment that shares its
token with the gateways by Secret reference, reaches the gateways' Service, and settings
the runner itself accepts."""

from __future__ import annotations

import pytest

from gateway.batch.settings import BatchSettings
from tests.support.helm import (
    MONITORING_API,
    RenderRefused,
    container,
    env_of,
    find,
    one,
    profile_values,
    render,
)

RUNNER = "rel-vlm-serve-batch-runner"
GATEWAY = "rel-vlm-serve-gateway"


def test_the_dev_profile_runs_one_runner_that_shares_its_token_with_the_gateways() -> None:
    objects = render(profile_values("dev"))
    runner = container(one(objects, "Deployment", RUNNER))
    assert runner["args"] == ["python3", "-m", "gateway.batch"]
    env, gateway_env = env_of(runner), env_of(container(one(objects, "Deployment", GATEWAY)))
    token = env["GATEWAY_BATCH_RUNNER_TOKEN"]["secretKeyRef"]
    assert gateway_env["GATEWAY_BATCH_RUNNER_TOKEN"]["secretKeyRef"] == token
    secret = one(objects, "Secret", token["name"])
    assert secret["metadata"]["annotations"]["vlm-serve.io/dev-only"] == "true"
    assert token["key"] in secret["stringData"]
    assert env["GATEWAY_BATCH_GATEWAY_URL"] == f"http://{GATEWAY}.vlm.svc.cluster.local:8000"
    assert gateway_env["GATEWAY_BATCH_PRIORITY"] == "10"
    assert "GATEWAY_LOG_DATABASE_URL" in env


def test_the_rendered_runner_environment_passes_the_runners_own_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = container(one(render(profile_values("dev")), "Deployment", RUNNER))
    for name, value in env_of(runner).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = BatchSettings()
    assert (settings.concurrency, settings.max_waiting, settings.metrics_port) == (4, 0, 9450)


def test_production_installs_name_a_secret_and_get_no_dev_token() -> None:
    with pytest.raises(RenderRefused, match=r"batchRunner\.token\.existingSecret"):
        render(profile_values("gpu-bf16", {"batchRunner": {"enabled": True}}))
    values = {"batchRunner": {"enabled": True, "token": {"existingSecret": "batch-token"}}}
    objects = render(profile_values("gpu-bf16", values))
    env = env_of(container(one(objects, "Deployment", RUNNER)))
    assert env["GATEWAY_BATCH_RUNNER_TOKEN"]["secretKeyRef"]["name"] == "batch-token"
    assert not [s for s in find(objects, "Secret") if "batch" in s["metadata"]["name"]]
    # Off by default: no runner, and the gateways refuse batch lines.
    default = render(profile_values("gpu-bf16"))
    assert not find(default, "Deployment", RUNNER)
    assert "GATEWAY_BATCH_RUNNER_TOKEN" not in env_of(
        container(one(default, "Deployment", GATEWAY))
    )


def test_network_policies_open_the_gateways_to_the_runner_only() -> None:
    objects = render(profile_values("dev"))
    door = one(objects, "NetworkPolicy", "rel-vlm-serve-gateway-from-batch-runner")
    assert door["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    (rule,) = door["spec"]["ingress"]
    assert [
        s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in rule["from"]
    ] == ["batch-runner"]
    runner = one(objects, "NetworkPolicy", RUNNER)
    targets = [
        rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in runner["spec"]["egress"]
        if "to" in rule
    ]
    assert targets == ["gateway", "mariadb"]


def test_prometheus_scrapes_the_runner_as_job_batch_runner_when_it_can() -> None:
    assert not find(render(profile_values("dev")), "PodMonitor")
    objects = render(profile_values("dev"), api_versions=(MONITORING_API,))
    monitor = one(objects, "PodMonitor", RUNNER)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [
        {"targetLabel": "job", "replacement": "batch-runner"},
        # The batch alerts group by namespace and release, like every other rule.
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "release",
        },
    ]
