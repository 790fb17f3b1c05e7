"""Dashboards of the serving path: overview and workers.

Every latency panel is a quantile of a rate over $__rate_interval, never a lifetime
average (sum/count since start). vLLM's series are `vllm:*` as vLLM 0.32 names them
(checked against the installed engine by the live test).
"""

from __future__ import annotations

from deploy.dashboards.spec import (
    NEEDS_GPU,
    RATE,
    Dashboard,
    Panel,
    p_quantile,
    q,
)

INFERENCE = '{route=~"/v1/chat/completions|/v1/vqa"}'
ALL_CACHE = "sum(rate(gateway_cache_requests_total[" + RATE + "]))"

OVERVIEW = Dashboard(
    uid="vlm-overview",
    title="vlm-serve / Overview",
    description="Start here: traffic, latency, errors, cache and saturation of the whole stack.",
    panels=(
        Panel(
            "Healthy workers and gateways",
            "Scrape targets up. 0 workers pages VlmNoHealthyWorker.",
            (
                q('sum(up{job="vllm-worker"})', "workers up"),
                q('sum(up{job="gateway"})', "gateways up"),
            ),
            kind="stat",
            width=8,
        ),
        Panel(
            "Alerts firing",
            "Prometheus's own ALERTS series; 0 when all is well.",
            (q('count(ALERTS{alertstate="firing"}) or vector(0)', "firing"),),
            kind="stat",
            width=8,
        ),
        Panel(
            "Availability and TTFT SLIs (5 m)",
            "Share of inference requests answered with a 5xx, and of streams slower than 2 s "
            "to the first token: the ratios the burn-rate alerts read.",
            (
                q("vlm:slo_availability:error_ratio_rate5m", "5xx ratio"),
                q("vlm:slo_ttft:slow_ratio_rate5m", "TTFT > 2 s ratio"),
            ),
            unit="percentunit",
            kind="stat",
            width=8,
        ),
        Panel(
            "Requests per second by route",
            "All answers, rejections included, per route template.",
            (
                q(
                    f'sum by (route) (rate(gateway_requests_total{{route=~"/v1/.*"}}[{RATE}]))',
                    "{{route}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Answers by status",
            "Per HTTP status, inference routes only.",
            (
                q(
                    f"sum by (status) (rate(gateway_requests_total{INFERENCE}[{RATE}]))",
                    "{{status}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "End-to-end latency p50 / p99 by route",
            "Request start to last byte at the gateway.",
            (
                q(
                    p_quantile(0.5, "gateway_request_duration_seconds", "route", INFERENCE),
                    "p50 {{route}}",
                ),
                q(
                    p_quantile(0.99, "gateway_request_duration_seconds", "route", INFERENCE),
                    "p99 {{route}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Time to first token p50 / p99 by cache outcome",
            "Streamed answers: request start to the first token sent (a cache hit replays).",
            (
                q(p_quantile(0.5, "gateway_time_to_first_token_seconds", "cache"), "p50 {{cache}}"),
                q(
                    p_quantile(0.99, "gateway_time_to_first_token_seconds", "cache"),
                    "p99 {{cache}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Inference latency p99 by cache outcome",
            "Chat and vqa requests, start to last byte, split by hit / miss / coalesced / bypass.",
            (q(p_quantile(0.99, "gateway_inference_duration_seconds", "cache"), "{{cache}}"),),
            unit="s",
        ),
        Panel(
            "Errors by code",
            "Error answers (JSON bodies and SSE error events) by our error code.",
            (q(f"sum by (code) (rate(gateway_errors_total[{RATE}]))", "{{code}}"),),
            unit="reqps",
        ),
        Panel(
            "Answer cache: hit / coalesced / miss / bypass share",
            "Share of requests by cache outcome.",
            (
                q(
                    f"sum by (outcome) (rate(gateway_cache_requests_total[{RATE}])) "
                    f"/ ignoring(outcome) group_left {ALL_CACHE}",
                    "{{outcome}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Saturation",
            "In flight per gateway; waiting on each worker; the fullest KV cache.",
            (
                q("sum by (instance) (gateway_requests_in_flight)", "in flight {{instance}}"),
                q("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
                q("max(vllm:kv_cache_usage_perc)", "max KV cache use"),
            ),
            width=24,
        ),
    ),
)

WORKERS = Dashboard(
    uid="vlm-workers",
    title="vlm-serve / Workers",
    description="The vLLM workers: queues, KV cache, tokens, affinity, ejections, GPUs.",
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
            "GPU utilisation and memory",
            "From the DCGM exporter: SM utilisation and framebuffer used share.",
            (
                q("DCGM_FI_DEV_GPU_UTIL", "util {{Hostname}} gpu {{gpu}}"),
                q(
                    "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
                    "memory {{Hostname}} gpu {{gpu}}",
                ),
            ),
            not_here=NEEDS_GPU,
        ),
    ),
)
