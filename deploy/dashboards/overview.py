"""The Overview dashboard: the first one on-call opens. Is it up (per pool, as Prometheus
and as the gateways see it, at the front door), where is it failing, how fast, how much
budget is left. Every alert's `dashboard` annotation links one of its panels.

Every latency panel is a quantile of a rate over $__rate_interval, never a lifetime
average (sum/count since start). Every query is scoped by the dashboard's variables.
"""

from __future__ import annotations

from deploy.dashboards.spec import (
    GATEWAY_SCOPE,
    RATE,
    REL,
    SCOPE,
    WORKER_SCOPE,
    Dashboard,
    Panel,
    p_quantile,
    q,
)

INFERENCE = f'route=~"/v1/chat/completions|/v1/vqa", {GATEWAY_SCOPE}'
ALL_CACHE = f"sum(rate(gateway_cache_requests_total{{{GATEWAY_SCOPE}}}[{RATE}]))"
# A worker's pool, as the gateways know it (gateway_worker_pool is 1 per worker and pool).
WITH_POOL = (
    f"* on (namespace, release, instance, worker) group_left (pool) "
    f'gateway_worker_pool{{{GATEWAY_SCOPE}, pool=~"$pool"}}'
)
RED_AT_ZERO = ((None, "red"), (1, "green"))
SLI_COLOURS = ((None, "green"), (0.01, "orange"), (0.05, "red"))

OVERVIEW = Dashboard(
    uid="vlm-overview",
    title="vlm-serve / Overview",
    description="Start here: is it up, where is it failing, how fast, how much budget is "
    "left; every alert links the panel below that shows it.",
    variables=SCOPE,
    panels=(
        Panel(
            "Workers up per pool",
            "Worker scrape targets up, per pool: vLLM workers (job vllm-worker) and Triton "
            "workers' metrics ports (job triton-worker). 0 in every pool pages "
            "VlmNoHealthyWorker.",
            (q(f"sum by (pool) (up{{{WORKER_SCOPE}}})", "{{pool}}"),),
            kind="stat",
            width=6,
            thresholds=RED_AT_ZERO,
        ),
        Panel(
            "Workers the gateways reach",
            "Workers some gateway finds healthy, per pool (gateway_worker_healthy): what can "
            "serve. 0 everywhere pages VlmNoReachableWorker, even while Prometheus sees the "
            "workers up.",
            (
                q(
                    f"sum by (pool) (max by (pool, worker) "
                    f"(gateway_worker_healthy{{{GATEWAY_SCOPE}}} {WITH_POOL}))",
                    "{{pool}}",
                ),
            ),
            kind="stat",
            width=6,
            thresholds=RED_AT_ZERO,
        ),
        Panel(
            "Gateways up",
            "Gateway replicas answering their scrape. 0 pages VlmNoGatewayUp.",
            (q(f'sum by (release) (up{{job="gateway", {REL}}})', "{{release}}"),),
            kind="stat",
            width=6,
            thresholds=RED_AT_ZERO,
        ),
        Panel(
            "Front door",
            "1 when the blackbox exporter's real request through Nginx (or the ingress) "
            "succeeded: what clients meet before any gateway. 0 for 2 minutes pages "
            "VlmFrontDoorDown. Needs the front-door probe (`make observe` runs it; Helm: "
            "monitoring.frontDoorProbe.enabled).",
            (q(f'min by (instance) (probe_success{{job="front-door", {REL}}})', "{{instance}}"),),
            kind="stat",
            width=6,
            thresholds=RED_AT_ZERO,
        ),
        Panel(
            "SLIs (5 m)",
            "Error ratios the burn-rate alerts read: availability (failed, abandoned and "
            "Nginx-answered 5xx), TTFT over 2 s and answers over 10 s from workers (misses), "
            "cache hits over 250 ms.",
            (
                q(f"vlm:slo_availability:error_ratio_rate5m{{{REL}}}", "availability"),
                q(f"vlm:slo_ttft:error_ratio_rate5m{{{REL}}}", "TTFT {{route}}"),
                q(f"vlm:slo_answer_latency:error_ratio_rate5m{{{REL}}}", "answer {{route}}"),
                q(f"vlm:slo_hit_latency:error_ratio_rate5m{{{REL}}}", "cache hits"),
            ),
            unit="percentunit",
            kind="stat",
            width=8,
            thresholds=SLI_COLOURS,
        ),
        Panel(
            "Error budget left (30 days)",
            "Share of each SLO's 30-day error budget not yet spent (below 0: the objective "
            "is missed).",
            (
                q(f"vlm:slo_availability:budget_left30d{{{REL}}}", "availability"),
                q(f"vlm:slo_ttft:budget_left30d{{{REL}}}", "TTFT {{route}}"),
                q(f"vlm:slo_answer_latency:budget_left30d{{{REL}}}", "answer {{route}}"),
                q(f"vlm:slo_hit_latency:budget_left30d{{{REL}}}", "cache hits"),
            ),
            unit="percentunit",
            kind="stat",
            width=8,
            thresholds=((None, "red"), (0, "orange"), (0.25, "green")),
        ),
        Panel(
            "Alerts firing",
            "Prometheus's own ALERTS series, the Watchdog left out; 0 when all is well.",
            (
                q(
                    f'count(ALERTS{{alertstate="firing", alertname!="Watchdog", {REL}}}) '
                    "or vector(0)",
                    "firing",
                ),
            ),
            kind="stat",
            width=8,
            thresholds=((None, "green"), (1, "red")),
        ),
        Panel(
            "Requests per second by route",
            "All answers, rejections included, per route template.",
            (
                q(
                    f'sum by (route) (rate(gateway_requests_total{{route=~"/v1/.*", '
                    f"{GATEWAY_SCOPE}}}[{RATE}]))",
                    "{{route}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "How requests ended",
            "Inference requests by how they ended for the client: ok, rejected (4xx), "
            "failed (5xx, or a stream broken after its 200), abandoned (the client left); "
            "and the 5xx Nginx answered itself (no gateway reached: needs the access-log "
            "exporter, mtail).",
            (
                q(
                    f"sum by (outcome) (rate(gateway_inference_outcomes_total{{{INFERENCE}}}"
                    f"[{RATE}]))",
                    "{{outcome}}",
                ),
                q(
                    f'sum(rate(vlm_frontdoor_requests_total{{answered_by="nginx", '
                    f'status=~"5..", {REL}}}[{RATE}])) or vector(0)',
                    "Nginx's own 5xx",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Answers by status",
            "Per HTTP status, inference routes only (a stream that fails later says 200).",
            (
                q(
                    f"sum by (status) (rate(gateway_requests_total{{{INFERENCE}}}[{RATE}]))",
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
                q(
                    p_quantile(0.5, "gateway_time_to_first_token_seconds", "cache", GATEWAY_SCOPE),
                    "p50 {{cache}}",
                ),
                q(
                    p_quantile(0.99, "gateway_time_to_first_token_seconds", "cache", GATEWAY_SCOPE),
                    "p99 {{cache}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Answer latency p99 by route and cache",
            "Non-streamed answers that succeeded, start to last byte (/v1/vqa never "
            "streams): misses apart from hits, as the latency SLOs read them.",
            (
                q(
                    p_quantile(0.99, "gateway_answer_seconds", "route, cache", GATEWAY_SCOPE),
                    "{{route}} {{cache}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Errors by code",
            "Error answers (JSON bodies and SSE error events) by our error code.",
            (
                q(
                    f"sum by (code) (rate(gateway_errors_total{{{GATEWAY_SCOPE}}}[{RATE}]))",
                    "{{code}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Worker attempts and errors per pool",
            "Exchanges with workers as the gateways saw them, per pool and outcome.",
            (
                q(
                    f"sum by (pool, outcome) (rate(gateway_worker_requests_total"
                    f'{{{GATEWAY_SCOPE}, pool=~"$pool"}}[{RATE}]))',
                    "{{pool}} {{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Answer cache: hit / coalesced / miss / bypass share",
            "Share of requests by cache outcome.",
            (
                q(
                    f"sum by (outcome) (rate(gateway_cache_requests_total{{{GATEWAY_SCOPE}}}"
                    f"[{RATE}])) / ignoring(outcome) group_left {ALL_CACHE}",
                    "{{outcome}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Queues",
            "Requests in flight per gateway replica; requests waiting on the workers, per "
            "pool (above 8 per worker for 5 minutes: VlmWorkerQueueSaturated); requests "
            "pending in Triton workers' queues (VlmTritonQueueBacklog).",
            (
                q(
                    f"sum by (instance) (gateway_requests_in_flight{{{GATEWAY_SCOPE}}})",
                    "in flight {{instance}}",
                ),
                q(
                    f"sum by (pool) (vllm:num_requests_waiting{{{WORKER_SCOPE}}})",
                    "waiting {{pool}}",
                ),
                q(
                    f"sum by (pool) (nv_inference_pending_request_count{{{WORKER_SCOPE}}})",
                    "pending in Triton {{pool}}",
                ),
            ),
        ),
        Panel(
            "KV cache use",
            "The fullest worker's KV cache per pool (1 = full; with preemptions: "
            "VlmWorkerKvCacheSaturated).",
            (q(f"max by (pool) (vllm:kv_cache_usage_perc{{{WORKER_SCOPE}}})", "{{pool}}"),),
            unit="percentunit",
            max=1,
        ),
    ),
)
