"""The rendered stack, run on this machine: the dev profile's gateway, migrations and
`helm test` containers run with exactly their rendered commands, arguments and environment,
with cluster names replaced by 127.0.0.1 and free ports (and Secrets by this session's own
database), against this machine's Redis and MariaDB and the session's cpu-tiny worker; the
same for the dev-triton profile against the session's Triton worker.

The worker container itself is not started a second time (it is the same
`python -m worker serve` the session fixture runs); its rendered command is parsed by the
launcher, and its probes are run against the session's worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from localstack.processes import free_port
from tests.support.helm import Manifest, container, env_of, one, pod_spec, profile_values, render
from tests.support.triton import TritonWorker
from worker.profiles import REPO_ROOT

GATEWAY_PY = str(REPO_ROOT / ".venv" / "bin" / "python")
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")
NAMESPACE = "vlm"
CLUSTER = f".{NAMESPACE}.svc.cluster.local"


def _local_env(
    cont: dict[str, Any], mounts: dict[str, Path], secrets: dict[tuple[str, str], str]
) -> dict[str, str]:
    """A container's environment as it would be in the pod, then made local: Secret
    references read from the rendered Secrets, mount paths moved into a temporary folder."""
    env: dict[str, str] = {}
    for name, value in env_of(cont).items():
        if isinstance(value, dict):
            ref = value["secretKeyRef"]
            value = secrets[ref["name"], ref["key"]]
        for mount, local in mounts.items():
            value = value.replace(mount + "/", f"{local}/")
        env[name] = value
    return env


def _python(command: list[str], python: str) -> list[str]:
    assert command[0] == "python3", command
    return [python, *command[1:]]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_status(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if _get(url) == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not 200 within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _dev_secrets(objects: list[Manifest], log_database_url: str) -> dict[tuple[str, str], str]:
    """The rendered Secrets, with the database URL made this session's own database on
    the machine's MariaDB (the rendered one names the bundled MariaDB Service, whose dev
    user and password exist only in the bundled pod)."""
    secrets = {
        (s["metadata"]["name"], key): value
        for s in objects
        if s["kind"] == "Secret"
        for key, value in s["stringData"].items()
    }
    rendered_db = secrets["rel-vlm-serve-dev-credentials", "database-url"]
    assert re.fullmatch(rf"mysql://vlm:[^@]+@rel-vlm-serve-mariadb{CLUSTER}:3306/vlm_serve",
                        rendered_db)  # fmt: skip
    secrets["rel-vlm-serve-dev-credentials", "database-url"] = log_database_url
    return secrets


def _run_gateway_and_helm_test(
    objects: list[Manifest],
    secrets: dict[tuple[str, str], str],
    log_database_url: str,
    tmp_path: Path,
    to_workers: Callable[[dict[str, str]], None],
) -> str:
    """The rendered gateway container run here (its ConfigMap volumes filled from the
    rendered ConfigMaps), the `helm test` pod's script against it, then its drain; the
    interaction log holds both test requests. ``to_workers`` points the rendered worker
    discovery at this session's worker. Returns a summary line."""
    since_ms = int(time.time() * 1000)
    deployment = one(objects, "Deployment", "rel-vlm-serve-gateway")
    gateway = container(deployment)
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in gateway["volumeMounts"]}
    for local in mounts.values():
        local.mkdir()
    for volume in pod_spec(deployment)["volumes"]:
        if "configMap" in volume:
            data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
            for key, content in data.items():
                (tmp_path / volume["name"] / key).write_text(content)
    env = _local_env(gateway, mounts, secrets)
    redis_url = f"redis://rel-vlm-serve-redis{CLUSTER}:6379/0"
    assert env["GATEWAY_REDIS_URL"] == redis_url
    to_workers(env)
    env["GATEWAY_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    env["GATEWAY_CACHE_NAMESPACE"] = f"helm-{uuid.uuid4().hex[:10]}"  # this run's own
    port = free_port()
    assert "command" not in gateway, "the image's entrypoint (tini) must stay PID 1"
    args = [a.replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=8000", f"--port={port}")
            for a in gateway["args"]]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _python(args, GATEWAY_PY),
            env={**os.environ, **env}, cwd=mounts["/tmp"], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        ready_s = _wait_status(
            base + gateway["readinessProbe"]["httpGet"]["path"], process, log, 120
        )
        assert _get(base + gateway["livenessProbe"]["httpGet"]["path"]) == 200

        # --- helm test: the rendered test pod's command, script from its ConfigMap ------
        pod = one(objects, "Pod")
        test = container(pod)
        script = one(objects, "ConfigMap", "rel-vlm-serve-smoke-test")["data"]["smoke_test.py"]
        (tmp_path / "smoke").mkdir()
        (tmp_path / "smoke" / "smoke_test.py").write_text(script)
        command = [a.replace("/smoke/", f"{tmp_path}/smoke/") for a in test["command"]]
        front = f"http://rel-vlm-serve-gateway{CLUSTER}:8000"
        assert f"--url={front}" in test["args"]
        test_args = [a.replace(front, base) for a in test["args"]]
        smoke = subprocess.run(
            [*_python(command, GATEWAY_PY), *test_args],
            env={**os.environ, **_local_env(test, {}, secrets)}, capture_output=True,
            text=True, timeout=600, check=False,
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr + log.read_text()[-3000:]
        summary = json.loads(smoke.stdout.strip().splitlines()[-1])
        assert summary["ok"] is True
        assert summary["x_cache"] == ["miss", "hit"]

        # --- drain: SIGTERM as Kubernetes sends it after preStop -------------------------
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        drain_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + drain_s < pod_spec(deployment)["terminationGracePeriodSeconds"]
    # The drained gateway flushed its interaction log: both test requests are rows.
    engine = create_sync_engine(log_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT cache FROM interactions WHERE prompt LIKE :p AND received_at_ms >= :t"
                ),
                {"p": "helm test %", "t": since_ms},
            ).all()
    finally:
        engine.dispose()
    assert sorted(r.cache for r in rows) == ["hit", "miss"]
    return (
        f"gateway ready in {ready_s:.2f} s; helm test {summary}; drain {drain_s:.2f} s "
        f"(preStop {pre_stop} s, grace "
        f"{pod_spec(deployment)['terminationGracePeriodSeconds']} s); log rows {len(rows)}"
    )


def test_the_rendered_dev_stack_serves_and_passes_helm_test(
    worker_url: str, log_database_url: str, tmp_path: Path
) -> None:
    objects = render(profile_values("dev"), namespace=NAMESPACE)
    secrets = _dev_secrets(objects, log_database_url)

    # --- migrations Job ---------------------------------------------------------------
    job = container(one(objects, "Job"))
    migrate = subprocess.run(
        _python(job["command"], GATEWAY_PY), env={**os.environ, **_local_env(job, {}, secrets)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr

    # --- worker: its rendered command parses, its probes pass on the session's worker --
    worker_deployment = one(objects, "Deployment", "rel-vlm-serve-worker-stable")
    worker = container(worker_deployment, "worker")
    assert "command" not in worker, "the image's entrypoint (tini) must stay PID 1"
    assert worker["args"][:4] == ["python3", "-m", "worker", "serve"]
    parsed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *worker["args"][4:]], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(parsed.stdout)["profile"]["name"] == "cpu-tiny"
    worker_port = int(worker_url.rsplit(":", 1)[1])
    assert _get(worker_url + worker["livenessProbe"]["httpGet"]["path"]) == 200
    ready_file = REPO_ROOT / ".run" / "test-logs" / f"worker-{worker_port}.ready"
    if ready_file.exists():  # the session started this worker (not VLM_TEST_WORKER_URL)
        probe = [
            a.replace("8000", str(worker_port)) for a in worker["readinessProbe"]["exec"]["command"]
        ]
        ready_env = {**os.environ, "WORKER_READY_FILE": str(ready_file)}
        assert subprocess.run(_python(probe, WORKER_PY), env=ready_env, cwd=REPO_ROOT,
                              timeout=60, check=False).returncode == 0  # fmt: skip

    # --- gateway Deployment, helm test, drain ------------------------------------------
    worker_dns = f"http://rel-vlm-serve-worker-stable{CLUSTER}:8000"

    def to_worker(env: dict[str, str]) -> None:
        # The headless Service's name resolves to the worker's address: DNS discovery is
        # the path that runs here too, on a name that resolves to 127.0.0.1.
        assert env["GATEWAY_WORKER_DNS"] == worker_dns
        env["GATEWAY_WORKER_DNS"] = f"http://127.0.0.1:{worker_port}"

    summary = _run_gateway_and_helm_test(objects, secrets, log_database_url, tmp_path, to_worker)
    print(f"\nrendered stack: {summary}")


def test_the_rendered_triton_dev_stack_serves_through_a_real_triton_worker(
    triton_worker: TritonWorker, log_database_url: str, tmp_path: Path
) -> None:
    """dev-triton: the gateway speaks KServe v2 to this session's Triton worker with the
    pool JSON and the chat template (its ConfigMap) exactly as rendered; the rendered
    worker's probes pass on that worker."""
    objects = render(profile_values("dev-triton"), namespace=NAMESPACE)
    secrets = _dev_secrets(objects, log_database_url)
    worker = container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"), "worker")
    port = int(triton_worker.url.rsplit(":", 1)[1])
    for probe in ("startupProbe", "livenessProbe"):
        assert _get(f"{triton_worker.url}{worker[probe]['httpGet']['path']}") == 200, probe
    ready_file = REPO_ROOT / ".run" / "test-logs" / f"worker-{port}.ready"
    if triton_worker.process is not None:  # the session started it (not VLM_TEST_TRITON_URL)
        command = [
            a.replace("8000", str(port)) for a in worker["readinessProbe"]["exec"]["command"]
        ]
        ready_env = {**os.environ, "WORKER_READY_FILE": str(ready_file)}
        assert subprocess.run(_python(command, WORKER_PY), env=ready_env, cwd=REPO_ROOT,
                              timeout=60, check=False).returncode == 0  # fmt: skip
    service = f"http://rel-vlm-serve-worker-stable{CLUSTER}:8000"

    def to_worker(env: dict[str, str]) -> None:
        (pool,) = json.loads(env["GATEWAY_WORKER_POOLS"])
        assert pool["dns"] == [service]
        assert pool["engine"] == "triton"
        # The Service name resolves to the worker's address; its metrics port sits at the
        # session worker's offset instead of Triton's 8000/8002.
        pool["dns"] = [triton_worker.url]
        pool["triton"]["metrics_port_offset"] = triton_worker.metrics_port_offset
        env["GATEWAY_WORKER_POOLS"] = json.dumps([pool])

    summary = _run_gateway_and_helm_test(objects, secrets, log_database_url, tmp_path, to_worker)
    print(f"\nrendered triton stack: {summary}")
