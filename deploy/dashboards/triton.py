"""The Triton workers' row of the Workers dashboard, under Triton's own metric names
(docs/TRITON.md lists them): up, requests and failures, the pending queue, time per
request, and the vLLM engine's series where the worker exports them.

Triton counts per model (labels model, version) on its metrics port, scraped as job
triton-worker. Both vLLM models behind Triton (ours on CPU, NVIDIA's vLLM backend on GPU)
are decoupled: Triton's request and compute timers stop when execute() hands the request
to vLLM's engine, not at the last token, so they show Triton's own overhead; the queue
timer is the wait before execute(). How long generation takes is vLLM's to say.
"""

from __future__ import annotations

from deploy.dashboards.spec import (
    NEEDS_OFFICIAL_TRITON_BACKEND,
    RATE,
    TRITON,
    Panel,
    p_quantile,
    q,
)

PER_MODEL = "instance, model"


def _rate(metric: str, by: str = PER_MODEL, selector: str = TRITON) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def _seconds_per(timer_us: str, count: str) -> str:
    """A cumulative microseconds counter over a count, per model, as seconds: a mean over
    the rate window (never since start)."""
    return f"{_rate(timer_us)} / {_rate(count)} / 1e6"


TRITON_PANELS: tuple[Panel, ...] = (
    Panel(
        "Triton workers up",
        "Triton workers' metrics ports answering their scrape (job triton-worker), per "
        "pool. A worker that was up and stops: VlmWorkerDown; none in the release: "
        "VlmNoHealthyWorker.",
        (q(f"sum by (pool) (up{{{TRITON}}})", "{{pool}}"),),
        kind="stat",
        thresholds=((None, "red"), (1, "green")),
    ),
    Panel(
        "Triton requests and failures",
        "Inference requests per model that Triton answered (nv_inference_request_success) "
        "and failed, by reason (nv_inference_request_failure: BACKEND, REJECTED, OTHER; "
        "CANCELED is the client leaving). Failures over 5% of requests: "
        "VlmTritonInferenceFailing.",
        (
            q(_rate("nv_inference_request_success"), "ok {{model}} {{instance}}"),
            q(
                _rate("nv_inference_request_failure", f"{PER_MODEL}, reason"),
                "failed {{reason}} {{model}} {{instance}}",
            ),
        ),
        unit="reqps",
    ),
    Panel(
        "Triton pending requests",
        "Requests pending in Triton's queue per model (nv_inference_pending_request_count: "
        "above 8 per worker for 5 minutes is VlmTritonQueueBacklog), and vLLM's own "
        "scheduler behind it where the model exports it (ours does; NVIDIA's backend "
        "does not).",
        (
            q(
                f"sum by ({PER_MODEL}) (nv_inference_pending_request_count{{{TRITON}}})",
                "pending {{model}} {{instance}}",
            ),
            q(f"vllm:num_requests_waiting{{{TRITON}}}", "vLLM waiting {{instance}}"),
            q(f"vllm:num_requests_running{{{TRITON}}}", "vLLM running {{instance}}"),
        ),
    ),
    Panel(
        "Triton time per request: queue, compute, in Triton",
        "Mean over the rate window, per model: the wait in Triton's queue before the "
        "model's execute() (VlmTritonQueueWaitHigh over 2 s), the compute time per "
        "inference, and the whole request inside Triton. The models are decoupled: "
        "compute and request time end when execute() hands the request to vLLM, not at "
        "the last token.",
        (
            q(
                _seconds_per("nv_inference_queue_duration_us", "nv_inference_request_success"),
                "queue {{model}} {{instance}}",
            ),
            q(
                _seconds_per("nv_inference_compute_infer_duration_us", "nv_inference_count"),
                "compute {{model}} {{instance}}",
            ),
            q(
                _seconds_per("nv_inference_request_duration_us", "nv_inference_request_success"),
                "in Triton {{model}} {{instance}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Triton engine: KV cache use",
        "vLLM's KV cache behind each Triton worker (1 = full), where the model exports it "
        "(ours does; NVIDIA's backend does not).",
        (q(f"vllm:kv_cache_usage_perc{{{TRITON}}}", "{{instance}}"),),
        unit="percentunit",
        max=1,
    ),
    Panel(
        "Triton engine: answers by finish reason",
        "vLLM's finished requests behind each Triton worker, by finish reason (stop, "
        "length, abort, error).",
        (
            q(
                _rate("vllm:request_success_total", "instance, finished_reason"),
                "{{finished_reason}} {{instance}}",
            ),
        ),
        unit="reqps",
    ),
    Panel(
        "Triton engine: TTFT and request latency p99",
        "Measured inside vLLM behind Triton (NVIDIA's backend with REPORT_CUSTOM_METRICS): "
        "first token, and the whole request.",
        (
            q(
                p_quantile(0.99, "vllm:time_to_first_token_seconds", "instance", TRITON),
                "TTFT {{instance}}",
            ),
            q(
                p_quantile(0.99, "vllm:e2e_request_latency_seconds", "instance", TRITON),
                "request {{instance}}",
            ),
        ),
        unit="s",
        not_here=NEEDS_OFFICIAL_TRITON_BACKEND,
    ),
    Panel(
        "Triton engine: tokens per second",
        "Prompt and generated tokens behind each Triton worker (NVIDIA's backend with "
        "REPORT_CUSTOM_METRICS).",
        (
            q(_rate("vllm:prompt_tokens_total", "instance"), "prompt {{instance}}"),
            q(_rate("vllm:generation_tokens_total", "instance"), "generated {{instance}}"),
        ),
        not_here=NEEDS_OFFICIAL_TRITON_BACKEND,
    ),
)
