# A GPU worker: vLLM's official image at a pinned version, with our launcher and profiles
# (python -m worker serve). One image per model build, tagged with version, model and
# precision (deploy/images/build.sh):
#   docker build -f deploy/images/worker-gpu.Dockerfile --build-arg PROFILE=gpu-awq \
#     -t REGISTRY/worker-gpu:0.1.0-qwen3vl8b-awq .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
ARG PROFILE=gpu-bf16

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKER_PROFILE=${PROFILE} \
    HOME=/cache \
    HF_HOME=/cache/huggingface

# tini is PID 1: it passes signals on to our process and reaps whatever ends under it
# (the processes we start end with their parent: gateway/children.py, worker/boot/).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The launcher needs only the standard library and vLLM; the torchvision shim in
# worker/boot/ steps aside beside CUDA torch.
COPY worker ./worker

USER 10001:10001
EXPOSE 8000
# vLLM's image starts `vllm serve`; ours starts the launcher (under tini), which starts
# vLLM's server, sends the warm-up request and writes the ready file.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "worker", "serve", "--host", "0.0.0.0", "--port", "8000"]
