"""The Workers dashboard: the vLLM workers, their GPUs and their capacity, then the Triton
workers under Triton's own metric names (triton.py).

Every latency panel is a quantile of a rate over $__rate_interval, never a lifetime
average (sum/count since start). vLLM's series are `vllm:*` as vLLM 0.32 names them
(checked against the installed engine by the live test).
"""

from __future__ import annotations

from deploy.dashboards.spec import (
    NEEDS_GPU,
    NEEDS_KUBE_STATE,
    RATE,
    Dashboard,
    Panel,
    p_quantile,
    q,
)
from deploy.dashboards.triton import TRITON_PANELS

# kube-state-metrics carries no release label: our objects are named after the release's
# full name, which holds "vlm-serve" (as the capacity rules select them).
OUR_PODS = 'pod=~".*vlm-serve.*", namespace=~"$namespace"'
OUR_DEPLOYMENTS = 'deployment=~".*vlm-serve.*-worker-.+", namespace=~"$namespace"'
OUR_AUTOSCALERS = 'horizontalpodautoscaler=~".*vlm-serve.*", namespace=~"$namespace"'

WORKERS = Dashboard(
    uid="vlm-workers",
    title="vlm-serve / Workers",
    description="The vLLM workers: queues, KV cache, tokens, affinity, ejections, GPUs; "
    "then the Triton workers: up, requests and failures, queue, time per request, engine.",
    panels=(
        Panel(
            "Running and waiting requests",
            "vLLM's scheduler per worker. Waiting above 8 for 5 minutes: VlmWorkerQueueSaturated.",
            (
                q("vllm:num_requests_running", "running {{instance}}"),
                q("vllm:num_requests_waiting", "waiting {{instance}}"),
            ),
        ),
        Panel(
            "KV cache use",
            "Fraction of the KV cache in use (1 = full; preemptions follow).",
            (q("vllm:kv_cache_usage_perc", "{{instance}}"),),
            unit="percentunit",
        ),
        Panel(
            "Tokens per second",
            "Prompt (prefill) and generated tokens per worker.",
            (
                q(
                    f"sum by (instance) (rate(vllm:prompt_tokens_total[{RATE}]))",
                    "prompt {{instance}}",
                ),
                q(
                    f"sum by (instance) (rate(vllm:generation_tokens_total[{RATE}]))",
                    "generated {{instance}}",
                ),
            ),
            unit="short",
        ),
        Panel(
            "Engine TTFT and inter-token latency p99",
            "Measured inside vLLM: excludes the gateway and the network.",
            (
                q(
                    p_quantile(0.99, "vllm:time_to_first_token_seconds", "instance"),
                    "TTFT {{instance}}",
                ),
                q(
                    p_quantile(0.99, "vllm:inter_token_latency_seconds", "instance"),
                    "ITL {{instance}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Gateway inter-token latency p50 / p99",
            "Gaps between streamed chunks as the client sees them.",
            (
                q(p_quantile(0.5, "gateway_inter_token_seconds", "route"), "p50 {{route}}"),
                q(p_quantile(0.99, "gateway_inter_token_seconds", "route"), "p99 {{route}}"),
            ),
            unit="s",
        ),
        Panel(
            "Prefix and image cache hit ratio",
            "vLLM's prefix cache and multimodal (image) cache, per worker.",
            (
                q(
                    f"sum by (instance) (rate(vllm:prefix_cache_hits_total[{RATE}])) / "
                    f"sum by (instance) (rate(vllm:prefix_cache_queries_total[{RATE}]))",
                    "prefix {{instance}}",
                ),
                q(
                    f"sum by (instance) (rate(vllm:mm_cache_hits_total[{RATE}])) / "
                    f"sum by (instance) (rate(vllm:mm_cache_queries_total[{RATE}]))",
                    "image {{instance}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Routing: least-loaded and image affinity",
            "Attempts the gateways sent, by why that worker was chosen.",
            (q(f"sum by (reason) (rate(gateway_worker_choices_total[{RATE}]))", "{{reason}}"),),
            unit="reqps",
        ),
        Panel(
            "Attempts and errors per worker",
            "Worker exchanges as the gateways saw them (ok / error).",
            (
                q(
                    f"sum by (worker, outcome) (rate(gateway_worker_requests_total[{RATE}]))",
                    "{{outcome}} {{worker}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Health and breaker state (gateway view)",
            "healthy: 1 passes health checks. breaker: 0 closed, 1 ejected, 2 probing.",
            (
                q("min by (worker) (gateway_worker_healthy)", "healthy {{worker}}"),
                q("max by (worker) (gateway_worker_breaker_state)", "breaker {{worker}}"),
            ),
        ),
        Panel(
            "Upstream errors and retries",
            "Failed worker exchanges by kind; attempts retried elsewhere before the first byte.",
            (
                q(f"sum by (kind) (rate(gateway_upstream_errors_total[{RATE}]))", "error {{kind}}"),
                q(
                    f"sum by (cause) (rate(gateway_upstream_retries_total[{RATE}]))",
                    "retry {{cause}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Preemptions",
            "Requests vLLM preempted for lack of KV cache.",
            (q(f"sum by (instance) (rate(vllm:num_preemptions_total[{RATE}]))", "{{instance}}"),),
            unit="short",
        ),
        Panel(
            "GPU utilisation",
            "From the DCGM exporter: SM utilisation per GPU (0-100%).",
            (q("DCGM_FI_DEV_GPU_UTIL", "{{Hostname}} gpu {{gpu}}"),),
            unit="percent",
            not_here=NEEDS_GPU,
        ),
        Panel(
            "GPU memory used",
            "From the DCGM exporter: framebuffer used, as a share of the GPU's memory.",
            (
                q(
                    "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
                    "{{Hostname}} gpu {{gpu}}",
                ),
            ),
            unit="percentunit",
            max=1,
            not_here=NEEDS_GPU,
        ),
        Panel(
            "Worker replicas: desired and available",
            "kube-state-metrics: each worker Deployment's desired and available replicas, "
            "pods that cannot be scheduled (no free GPU), and the autoscalers' replicas "
            "against their maximum (KEDA's keda-hpa-*, the gateways' HPA).",
            (
                q(f"kube_deployment_spec_replicas{{{OUR_DEPLOYMENTS}}}", "desired {{deployment}}"),
                q(
                    f"kube_deployment_status_replicas_available{{{OUR_DEPLOYMENTS}}}",
                    "available {{deployment}}",
                ),
                q(
                    f"sum by (namespace) (kube_pod_status_unschedulable{{{OUR_PODS}}})",
                    "unschedulable pods",
                ),
                q(
                    f"kube_horizontalpodautoscaler_status_current_replicas{{{OUR_AUTOSCALERS}}}",
                    "{{horizontalpodautoscaler}}",
                ),
                q(
                    f"kube_horizontalpodautoscaler_spec_max_replicas{{{OUR_AUTOSCALERS}}}",
                    "max {{horizontalpodautoscaler}}",
                ),
            ),
            not_here=NEEDS_KUBE_STATE,
        ),
        Panel(
            "Restarts, crash loops and OOM kills",
            "kube-state-metrics per container of the release: restarts, containers waiting "
            "in CrashLoopBackOff, and those whose last end was an OOM kill.",
            (
                q(
                    "sum by (pod, container) (increase(kube_pod_container_status_restarts_total"
                    f"{{{OUR_PODS}}}[{RATE}]))",
                    "restarts {{pod}}/{{container}}",
                ),
                q(
                    "sum by (namespace) (kube_pod_container_status_waiting_reason"
                    f'{{reason="CrashLoopBackOff", {OUR_PODS}}})',
                    "in CrashLoopBackOff",
                ),
                q(
                    "sum by (namespace) (kube_pod_container_status_last_terminated_reason"
                    f'{{reason="OOMKilled", {OUR_PODS}}})',
                    "last ended OOM-killed",
                ),
                q(
                    "sum by (namespace) (kube_pod_container_status_ready"
                    f'{{container="worker", {OUR_PODS}}} == 0)',
                    "workers not ready",
                ),
            ),
            not_here=NEEDS_KUBE_STATE,
        ),
        # Last: the alerts link the panels above by their place.
        *TRITON_PANELS,
    ),
)
