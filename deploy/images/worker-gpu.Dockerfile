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

WORKDIR /app
# The launcher needs only the standard library and vLLM; the torchvision shim in
# worker/boot/ steps aside beside CUDA torch.
COPY worker ./worker

USER 10001:10001
EXPOSE 8000
# vLLM's image starts `vllm serve`; ours starts the launcher, which starts vLLM's server,
# sends the warm-up request and writes the ready file.
ENTRYPOINT []
CMD ["python3", "-m", "worker", "serve", "--host", "0.0.0.0", "--port", "8000"]
