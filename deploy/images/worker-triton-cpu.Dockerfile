# A CPU Triton worker: Triton Inference Server (the tritonserver the nvidia-pytriton wheel
# bundles) with our Python-backend vLLM model and the tiny random-weight Qwen3-VL, for
# clusters without GPUs and chart tests (its answers are noise, by design):
#   docker build -f deploy/images/worker-triton-cpu.Dockerfile \
#     -t REGISTRY/worker-cpu:0.1.0-tiny-triton-cpu .
# The same steps as `make triton-install`: a virtual environment of its own (numpy < 2 for
# the Python backend's stub; Triton activates it through the model's EXECUTION_ENV_PATH,
# which needs bin/activate), laid out as in a checkout, first on PATH.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
# torch==2.13.0+cpu lives on PyTorch's CPU index (this project's machines have it locally).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/cache \
    HF_HOME=/cache/huggingface \
    PATH=/app/.venv-triton/bin:$PATH

# tini is PID 1: it passes signals on to our process and reaps whatever ends under it
# (Triton's stub and vLLM's engine processes).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends tini && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY worker/requirements-triton.lock worker/requirements-triton.lock
RUN python3 -m venv .venv-triton
# --no-deps: the lock is the complete, tested set (see worker/requirements.txt).
RUN python3 -m pip install -q --no-deps -r worker/requirements-triton.lock
COPY worker ./worker
# The stub runs Python isolated: the torchvision shim reaches it through a .pth file.
RUN echo "/app/worker/boot" > "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vlm-worker-boot.pth"
RUN PYTHONPATH=worker/boot python3 -m worker.tiny_model --force .models/tiny-qwen3-vl
# The Python backend's stub for this Python beside the backend: the launcher puts it there
# at its first start, which a read-only root filesystem (the chart's pods) would refuse.
RUN python3 -c "from worker.triton.launcher import backend_directory; backend_directory()"

USER 10001:10001
# Triton's HTTP port and its metrics port (WORKER_METRICS_PORT, default the port + 2).
EXPOSE 8000 8002
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "worker", "serve", "--profile", "triton-cpu-tiny", "--host", "0.0.0.0", "--port", "8000"]
