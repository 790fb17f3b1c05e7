"""Every Prometheus metric the gateway exports, in one place.

Each app owns a CollectorRegistry (no process-global default registry), so tests can
build several apps side by side and each /metrics shows only its own app.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.metric_types import Counter, Gauge, Histogram

# Request latency spans fast rejections (sub-millisecond) to long generations (minutes).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Text checks take microseconds; an image check that asks the worker takes seconds.
_MODERATION_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01,
    0.05, 0.25, 1.0, 5.0, 30.0,
)  # fmt: skip

_IMAGE_BYTES_BUCKETS = tuple(float(2**n) for n in range(12, 26, 2))  # 4 KiB .. 16 MiB

# Worker pools (canary rollouts): a worker outside any named pool is in "default".
DEFAULT_POOL = "default"
WORKER_OUTCOMES = ("ok", "rejected", "error")
# Per-key series stay bounded: a replica labels at most this many key ids.
MAX_KEY_LABELS = 100
OTHER_KEYS = "other"
LIMIT_KINDS = ("requests", "tokens", "concurrent")
UPSTREAM_ERROR_KINDS = (
    "connect", "disconnect", "timeout", "status_4xx", "status_5xx", "protocol", "ejected",
)  # fmt: skip
RETRY_CAUSES = ("connect", "disconnect", "status_503", "ejected")
INFERENCE_ROUTES = ("/v1/chat/completions", "/v1/vqa")
# How an inference request ended, as the client lived it (the SLO counts ok and rejected as
# good): ok; rejected (a 4xx of the client's making); failed (a 5xx, or an error event after
# a streamed 200); abandoned (the client left before the answer was complete: 499).
INFERENCE_OUTCOMES = ("ok", "rejected", "failed", "abandoned")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests handled, by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to the last response byte, by route and status.",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streamed requests: time from request start to the first chunk (the worker's, or "
            "a replay's), by route and answer-cache outcome.",
            ["route", "cache"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed exchanges with workers, by kind (connect, disconnect, timeout, status_4xx, "
            "status_5xx, protocol).",
            ["kind"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors",
            "Error answers (JSON or SSE error events), by error code.",
            ["code"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects",
            "Requests whose client went away before the answer was complete.",
            ["route"],
            registry=r,
        )
        self.worker_healthy = Gauge(
            "gateway_worker_healthy",
            "1 when the worker's last health check passed, else 0.",
            ["worker"],
            registry=r,
        )
        self.worker_breaker_state = Gauge(
            "gateway_worker_breaker_state",
            "Passive ejection per worker: 0 closed, 1 open (ejected), 2 half-open (probing).",
            ["worker"],
            registry=r,
        )
        self.worker_load = Gauge(
            "gateway_worker_load",
            "Load a worker last reported on /metrics: running, waiting, kv_cache_usage.",
            ["worker", "kind"],
            registry=r,
        )
        self.worker_choices = Counter(
            "gateway_worker_choices",
            "Attempts sent to each worker, by reason (least_loaded, affinity, affinity_overflow).",
            ["worker", "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries",
            "Attempts retried on another worker before any byte reached the client, by "
            "cause (connect, disconnect, status_503).",
            ["cause"],
            registry=r,
        )

        self.cache_requests = Counter(
            "gateway_cache_requests",
            "Answer-cache outcome per request: hit, similar, miss, coalesced or bypass.",
            ["outcome"],
            registry=r,
        )
        self.cache_stores = Counter(
            "gateway_cache_stores",
            "Answers offered to the cache, by result (stored, too_large, not_json, failed).",
            ["result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "gateway_cache_errors",
            "Redis calls that failed or were skipped by the open breaker, by operation.",
            ["operation"],
            registry=r,
        )
        self.cache_breaker_state = Gauge(
            "gateway_cache_breaker_state",
            "Redis circuit breaker: 0 closed, 1 open (Redis skipped), 2 half-open (probing).",
            registry=r,
        )
        self.json_repairs = Counter(
            "gateway_json_repairs",
            "Answer parts that are JSON (a structured output's content, tool-call arguments) "
            "sent with the raw control characters in their strings escaped, by part.",
            ["part"],
            registry=r,
        )
        for part in ("content", "tool_arguments"):
            self.json_repairs.labels(part)
        self.cache_local_lookups = Counter(
            "gateway_cache_local_lookups",
            "Lookups in the replica's in-process answer cache (in front of Redis), by result "
            "(hit: answered from memory; miss: Redis was asked).",
            ["result"],
            registry=r,
        )
        self.cache_local_bytes = Gauge(
            "gateway_cache_local_bytes",
            "Bytes held by the replica's in-process answer cache (GATEWAY_CACHE_LOCAL_MAX_BYTES).",
            registry=r,
        )
        self.cache_recalls = Counter(
            "gateway_cache_recalls",
            "Request bodies answered from their earlier preparation (gateway/cache/recall.py), "
            "skipping parsing, image checks and key derivation.",
            registry=r,
        )
        self.cache_recall_bytes = Gauge(
            "gateway_cache_recall_bytes",
            "Bytes held by the replica's prepared bodies (GATEWAY_CACHE_RECALL_MAX_BYTES).",
            registry=r,
        )
        # Near-duplicate photos (gateway/cache/near/; none: no candidate, rejected: all
        # failed verification, error: Redis or an undecodable image).
        self.cache_near_lookups = Counter(
            "gateway_cache_near_lookups",
            "Near-duplicate lookups after an exact miss, by result (similar/none/rejected/error).",
            ["result"],
            registry=r,
        )
        self.cache_near_indexed = Counter(
            "gateway_cache_near_indexed",
            "Stored answers added to the near-duplicate index, by result (indexed, failed).",
            ["result"],
            registry=r,
        )
        self.cache_near_signature_seconds = Histogram(
            "gateway_cache_near_signature_seconds",
            "Time to compute one request's image signatures (in a thread).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=r,
        )
        self.event_loop_stalled = Counter(
            "gateway_event_loop_stalled_seconds",
            "Time this replica's event loop ran late (a tick every 10 ms, summed lateness): "
            "its rate is the share of time the loop could serve nobody. Redis deadlines do "
            "not count it (gateway/loop_lag.py).",
            registry=r,
        )
        self.idempotency_requests = Counter(
            "gateway_idempotency_requests",
            "Requests with an Idempotency-Key, by outcome: idempotent (its answer, stored or "
            "joined), miss (generated), bypass (Redis unavailable), conflict (409).",
            ["outcome"],
            registry=r,
        )
        self.coalesce_fallbacks = Counter(
            "gateway_coalesce_fallbacks",
            "Waiters that called a worker themselves, by reason.",
            ["reason"],
            registry=r,
        )

        self.remote_image_fetches = Counter(
            "gateway_remote_image_fetches",
            "Remote image URLs fetched by the gateway, by outcome (ok, host_not_allowed, "
            "address_blocked, fetch_failed, too_many_redirects, too_large, timeout, "
            "invalid_url, cancelled, error).",
            ["outcome"],
            registry=r,
        )
        self.remote_image_bytes = Histogram(
            "gateway_remote_image_bytes",
            "Size of the remote images fetched successfully.",
            buckets=_IMAGE_BYTES_BUCKETS,
            registry=r,
        )
        self.remote_image_fetch_duration = Histogram(
            "gateway_remote_image_fetch_duration_seconds",
            "Time to fetch one remote image (redirects included), whatever the outcome.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.moderation_decisions = Counter(
            "gateway_moderation_decisions",
            "Content-policy decisions, by stage (prompt, image, answer), category (none when "
            "it passed or the check failed) and outcome (pass, blocked, check_failed).",
            ["stage", "category", "outcome"],
            registry=r,
        )
        self.moderation_image_verdicts = Counter(
            "gateway_moderation_image_verdicts",
            "Where image-check verdicts came from: cache_hit (Redis), shared (a check of the "
            "same image already in flight here), cache_miss (asked the worker).",
            ["source"],
            registry=r,
        )
        self.moderation_check_duration = Histogram(
            "gateway_moderation_check_duration_seconds",
            "Time spent on one moderation check, by stage (prompt, image, answer).",
            ["stage"],
            buckets=_MODERATION_BUCKETS,
            registry=r,
        )

        self.auth_failures = Counter(
            "gateway_auth_failures",
            "Requests refused by API-key authentication, by reason (missing, malformed, "
            "unknown, revoked, wrong_secret, unavailable).",
            ["reason"],
            registry=r,
        )
        self.auth_key_refreshes = Counter(
            "gateway_auth_key_refreshes",
            "Reloads of the API-key snapshot from the database, by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused with 429, by the limit they crossed (requests, tokens, concurrent).",
            ["limit"],
            registry=r,
        )
        self.rate_limiter_errors = Counter(
            "gateway_rate_limiter_errors",
            "Rate-limit checks that could not ask Redis (failed or skipped by the open "
            "breaker), by limit; the request then passed (fail-open) or got a 503.",
            ["limit"],
            registry=r,
        )
        self.rate_limiter_breaker_state = Gauge(
            "gateway_rate_limiter_breaker_state",
            "The rate limiter's Redis breaker: 0 closed, 1 open (Redis skipped), 2 half-open.",
            registry=r,
        )

        self._add_on_call_metrics(r)

    def _add_on_call_metrics(self, r: CollectorRegistry) -> None:
        """What the dashboards and alerts in deploy/ read besides the series above."""
        self.inference_duration = Histogram(
            "gateway_inference_duration_seconds",
            "Inference requests (chat, vqa), start to last byte, by route and answer-cache "
            "outcome (hit, miss, coalesced, bypass; none when refused before the cache).",
            ["route", "cache"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "gateway_inter_token_seconds",
            "Streamed answers: time between consecutive chunks sent to the client.",
            ["route"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.worker_requests = Counter(
            "gateway_worker_requests",
            "Attempts sent to each worker, by pool and outcome (ok; rejected: the worker's "
            "4xx; error: 5xx, broken, timed out or unreachable).",
            ["worker", "pool", "outcome"],
            registry=r,
        )
        self.pool_answer_seconds = Histogram(
            "gateway_pool_answer_seconds",
            "Successful worker attempts by pool (canary against stable): time to the whole "
            "answer (non-streamed) or to the first chunk (streamed), by stream.",
            ["pool", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_outcomes = Counter(
            "gateway_inference_outcomes",
            "Inference requests by how they ended for the client: ok, rejected (4xx), failed "
            "(5xx, or an SSE error event after a 200), abandoned (client gone, 499).",
            ["route", "outcome"],
            registry=r,
        )
        self.answer_seconds = Histogram(
            "gateway_answer_seconds",
            "Non-streamed inference answers that succeeded: start to last byte, by route and "
            "answer-cache outcome (the latency SLI per path; misses apart from hits).",
            ["route", "cache"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.worker_pool = Gauge(
            "gateway_worker_pool",
            "1 for each worker this gateway knows, labelled with its pool: join it to "
            "gateway_worker_healthy for a per-pool view.",
            ["worker", "pool"],
            registry=r,
        )
        self.cache_namespace = Gauge(
            "gateway_cache_namespace_info",
            "1, labelled with the answer cache's key namespace (a change explains a hit-ratio "
            "drop).",
            ["cache_namespace"],
            registry=r,
        )
        self.key_requests = Counter(
            "gateway_key_requests",
            f"Authenticated requests (429s included) per API key id: the first "
            f"{MAX_KEY_LABELS} ids a replica sees; later ones count as key={OTHER_KEYS!r}.",
            ["key"],
            registry=r,
        )
        self.key_rate_limited = Counter(
            "gateway_key_rate_limited",
            "Requests refused with 429 per API key id (bounded as gateway_key_requests) and "
            "limit (requests, tokens, concurrent).",
            ["key", "limit"],
            registry=r,
        )
        # The Batch API as the gateways see it (the runner has metrics of its own:
        # gateway/batch/metrics.py).
        self.batches_created = Counter(
            "gateway_batches_created", "Batches created (POST /v1/batches).", registry=r
        )
        self.batch_line_requests = Counter(
            "gateway_batch_line_requests",
            "Requests the batch runner sent for batch lines (low priority on the workers).",
            registry=r,
        )
        self._key_labels: set[str] = set()
        # Series that only move when something goes wrong are exported at 0 from the start,
        # so panels and alerts see 0, not "no data", on a healthy stack.
        for limit in LIMIT_KINDS:
            self.rate_limiter_errors.labels(limit)
            self.rate_limited.labels(limit)
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for cause in RETRY_CAUSES:
            self.upstream_retries.labels(cause)
        for operation in ("get", "put", "delete", "claim"):
            self.cache_errors.labels(operation)
        for result in ("similar", "none", "rejected", "error"):
            self.cache_near_lookups.labels(result)
        # The SLO's selector matches from the start: an SLI over no series reads as absent.
        for route in INFERENCE_ROUTES:
            for outcome in INFERENCE_OUTCOMES:
                self.inference_outcomes.labels(route, outcome)

    def key_label(self, key_id: str) -> str:
        """The key's own label while fewer than MAX_KEY_LABELS are in use, else "other"."""
        if key_id in self._key_labels:
            return key_id
        if len(self._key_labels) < MAX_KEY_LABELS:
            self._key_labels.add(key_id)
            return key_id
        return OTHER_KEYS

    def worker_joined(self, worker: str, pool: str = DEFAULT_POOL) -> None:
        self.worker_pool.labels(worker, pool).set(1)
        for outcome in WORKER_OUTCOMES:
            self.worker_requests.labels(worker, pool, outcome)

    def worker_left(self, worker: str, pool: str = DEFAULT_POOL) -> None:
        with contextlib.suppress(KeyError):
            self.worker_pool.remove(worker, pool)
        for outcome in WORKER_OUTCOMES:
            with contextlib.suppress(KeyError):
                self.worker_requests.remove(worker, pool, outcome)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
