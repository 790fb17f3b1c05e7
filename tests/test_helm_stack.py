"""The rendered stack, run on this machine: the dev profile's gateway, migrations and
`helm test` containers run with exactly their rendered commands, arguments and environment,
with cluster names replaced by 127.0.0.1 and free ports (and Secrets by this session's own
database), against this machine's Redis and MariaDB and the session's cpu-tiny worker.

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
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from localstack.processes import free_port
from tests.support.helm import container, env_of, one, pod_spec, profile_values, render
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


def test_the_rendered_dev_stack_serves_and_passes_helm_test(
    worker_url: str, log_database_url: str, tmp_path: Path
) -> None:
    objects = render(profile_values("dev"), namespace=NAMESPACE)
    secrets = {
        (s["metadata"]["name"], key): value
        for s in objects
        if s["kind"] == "Secret"
        for key, value in s["stringData"].items()
    }
    # The rendered database URL names the bundled MariaDB Service; here it is this
    # session's own database on the machine's MariaDB (the dev user and password exist
    # only in the bundled pod).
    rendered_db = secrets["rel-vlm-serve-dev-credentials", "database-url"]
    assert re.fullmatch(rf"mysql://vlm:[^@]+@rel-vlm-serve-mariadb{CLUSTER}:3306/vlm_serve",
                        rendered_db)  # fmt: skip
    secrets["rel-vlm-serve-dev-credentials", "database-url"] = log_database_url

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
    assert worker["command"] == ["python3", "-m", "worker", "serve"]
    parsed = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *worker["args"]], cwd=REPO_ROOT,
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

    # --- gateway Deployment --------------------------------------------------------------
    deployment = one(objects, "Deployment", "rel-vlm-serve-gateway")
    gateway = container(deployment)
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in gateway["volumeMounts"]}
    for local in mounts.values():
        local.mkdir()
    env = _local_env(gateway, mounts, secrets)
    worker_dns = f"http://rel-vlm-serve-worker-stable{CLUSTER}:8000"
    redis_url = f"redis://rel-vlm-serve-redis{CLUSTER}:6379/0"
    assert env["GATEWAY_WORKER_DNS"] == worker_dns
    assert env["GATEWAY_REDIS_URL"] == redis_url
    # The headless Service's name resolves to the worker's address: DNS discovery is the
    # path that runs here too, on a name that resolves to 127.0.0.1.
    env["GATEWAY_WORKER_DNS"] = f"http://127.0.0.1:{worker_port}"
    env["GATEWAY_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    env["GATEWAY_CACHE_NAMESPACE"] = f"helm-{uuid.uuid4().hex[:10]}"  # this run's own
    port = free_port()
    args = [a.replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=8000", f"--port={port}")
            for a in gateway["args"]]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*_python(gateway["command"], GATEWAY_PY), *args],
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
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
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
                text("SELECT cache FROM interactions WHERE prompt LIKE :p"),
                {"p": "helm test %"},
            ).all()
    finally:
        engine.dispose()
    assert sorted(r.cache for r in rows) == ["hit", "miss"]
    print(
        f"\nrendered stack: gateway ready in {ready_s:.2f} s; helm test {summary}; "
        f"drain {drain_s:.2f} s (preStop {pre_stop} s, grace "
        f"{pod_spec(deployment)['terminationGracePeriodSeconds']} s); log rows {len(rows)}"
    )
