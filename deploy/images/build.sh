#!/usr/bin/env bash
# Build (or, with --print, only list) every image with the tags the Helm chart expects:
#   gateway:<version>, worker-cpu:<version>-tiny-cpu, worker-cpu:<version>-tiny-triton-cpu,
#   worker-gpu:<version>-qwen3vl8b-{bf16,fp8,awq}  (one per model build)
# (gpu-triton runs NVIDIA's own tritonserver vLLM image: nothing to build.)
# REGISTRY=ghcr.io/you deploy/images/build.sh [--print] [--push]
# No base image can be pulled on this project's machines: build where a registry is
# reachable (the ct-install workflow in .github/workflows does).
set -euo pipefail
cd "$(dirname "$0")/../.."
REGISTRY=${REGISTRY:-ghcr.io/vlm-serve}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
declare -A GPU_TAGS=([gpu-bf16]=qwen3vl8b-bf16 [gpu-fp8]=qwen3vl8b-fp8 [gpu-awq]=qwen3vl8b-awq)

builds=("gateway.Dockerfile|$REGISTRY/gateway:$VERSION|"
        "worker-cpu.Dockerfile|$REGISTRY/worker-cpu:$VERSION-tiny-cpu|"
        "worker-triton-cpu.Dockerfile|$REGISTRY/worker-cpu:$VERSION-tiny-triton-cpu|")
for profile in gpu-bf16 gpu-fp8 gpu-awq; do
  builds+=("worker-gpu.Dockerfile|$REGISTRY/worker-gpu:$VERSION-${GPU_TAGS[$profile]}|--build-arg=PROFILE=$profile")
done

for build in "${builds[@]}"; do
  IFS='|' read -r file tag arg <<<"$build"
  if [[ ${1:-} == --print ]]; then
    echo "$tag deploy/images/$file $arg"
    continue
  fi
  docker build -f "deploy/images/$file" ${arg:+"$arg"} -t "$tag" .
  if [[ ${1:-} == --push ]]; then docker push "$tag"; fi
done
