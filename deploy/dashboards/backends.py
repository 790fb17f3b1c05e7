"""Dashboards behind the serving path: data path, tenants, canary vs stable."""

from __future__ import annotations

from deploy.dashboards.batch import BATCH_PANELS
from deploy.dashboards.spec import (
    MYSQLD_EXPORTER,
    NEEDS_REPLICA,
    NGINX_EXPORTER,
    RATE,
    REDIS_EXPORTER,
    Dashboard,
    Panel,
    p_quantile,
    q,
)

DATA_PATH = Dashboard(
    uid="vlm-data-path",
    title="vlm-serve / Data path",
    description="Redis (cache, coalescing, rate limits), the interaction log, MySQL, Nginx.",
    panels=(
        Panel(
            "Redis breakers (gateway view)",
            "0 closed, 1 open (Redis skipped: cache off, limiter failing open), 2 probing.",
            (
                q("max by (instance) (gateway_cache_breaker_state)", "cache {{instance}}"),
                q(
                    "max by (instance) (gateway_rate_limiter_breaker_state)",
                    "rate limiter {{instance}}",
                ),
            ),
        ),
        Panel(
            "Rate limiter failing open",
            "Limit checks that could not ask Redis: the request passed on local limits (or 503).",
            (q(f"sum by (limit) (rate(gateway_rate_limiter_errors_total[{RATE}]))", "{{limit}}"),),
            unit="reqps",
        ),
        Panel(
            "Answer cache writes and Redis errors",
            "Answers offered to the cache by result; Redis calls that failed or were skipped.",
            (
                q(
                    f"sum by (result) (rate(gateway_cache_stores_total[{RATE}]))",
                    "store {{result}}",
                ),
                q(
                    f"sum by (operation) (rate(gateway_cache_errors_total[{RATE}]))",
                    "error {{operation}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Redis server",
            "From the Redis exporter: commands per second, clients, and redis_up (0 when the "
            "exporter cannot reach Redis).",
            (
                q(f"sum(rate(redis_commands_processed_total[{RATE}]))", "commands/s"),
                q("sum(redis_connected_clients)", "clients"),
                q("min(redis_up)", "up"),
            ),
            exporter=REDIS_EXPORTER,
        ),
        Panel(
            "Redis memory",
            "Used memory per Redis.",
            (q("redis_memory_used_bytes", "used {{instance}}"),),
            unit="bytes",
            exporter=REDIS_EXPORTER,
        ),
        Panel(
            "Interaction log: queue and writes",
            "Records waiting in memory and in the spool (what a pod that ends now would take "
            "with it when its spool is an emptyDir); rows committed to MySQL per second.",
            (
                q("sum by (instance) (gateway_interactions_queue_depth)", "queue {{instance}}"),
                q("sum by (instance) (gateway_interactions_spool_rows)", "spool {{instance}}"),
                q(
                    f"sum by (path) (rate(gateway_interactions_written_total[{RATE}]))",
                    "written {{path}}",
                ),
            ),
        ),
        Panel(
            "Interaction log: spool",
            "Share of each gateway's spool limit in use while MySQL is unavailable (over 80% "
            "pages VlmInteractionSpoolFilling).",
            (
                q(
                    "gateway_interactions_spool_bytes / gateway_interactions_spool_max_bytes",
                    "{{instance}}",
                ),
            ),
            unit="percentunit",
            max=1,
        ),
        Panel(
            "Interaction log: oldest spooled record",
            "Age of the oldest record not yet in MySQL (0: spool empty).",
            (q("gateway_interactions_spool_oldest_age_seconds", "{{instance}}"),),
            unit="s",
        ),
        Panel(
            "Interaction log: drops and MySQL state",
            "Records lost, by reason (should stay 0); db_up per gateway; records MySQL "
            "refused as sent and stored sanitized (poisoned=1).",
            (
                q(
                    f"sum by (reason) (increase(gateway_interactions_dropped_total[{RATE}]))",
                    "dropped {{reason}}",
                ),
                q("min by (instance) (gateway_interactions_db_up)", "db up {{instance}}"),
                q(
                    f"sum (increase(gateway_interactions_poisoned_total[{RATE}]))",
                    "stored poisoned",
                ),
            ),
        ),
        Panel(
            "MySQL batch write latency p99",
            "Time to write one batch of interaction rows.",
            (
                q(
                    p_quantile(0.99, "gateway_interactions_batch_seconds", "instance"),
                    "{{instance}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "MySQL server",
            "From the mysqld exporter: queries per second, connected threads, INSERT statements "
            "per second (the interaction log writes multi-row INSERTs).",
            (
                q(f"rate(mysql_global_status_queries[{RATE}])", "queries/s"),
                q("mysql_global_status_threads_connected", "threads"),
                q(
                    f'rate(mysql_global_status_commands_total{{command="insert"}}[{RATE}])',
                    "INSERT statements/s",
                ),
            ),
            exporter=MYSQLD_EXPORTER,
        ),
        Panel(
            "MySQL replication lag",
            "Seconds a replica is behind its primary (empty without replicas).",
            (q("mysql_slave_status_seconds_behind_master", "{{instance}}"),),
            unit="s",
            not_here=NEEDS_REPLICA,
            exporter=MYSQLD_EXPORTER,
        ),
        Panel(
            "Nginx",
            "From the Nginx exporter (stub_status): requests per second and open connections.",
            (
                q(f"rate(nginx_http_requests_total[{RATE}])", "requests/s"),
                q("nginx_connections_active", "connections"),
            ),
            exporter=NGINX_EXPORTER,
        ),
        Panel(
            "Moderation decisions",
            "Content-policy decisions by stage and outcome (check_failed: image check down).",
            (
                q(
                    f"sum by (stage, outcome) (rate(gateway_moderation_decisions_total[{RATE}]))",
                    "{{stage}} {{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        *BATCH_PANELS,
    ),
)

TENANTS = Dashboard(
    uid="vlm-tenants",
    title="vlm-serve / Tenants",
    description="Per API key: the busiest keys, who is rate limited, authentication failures.",
    panels=(
        Panel(
            "Top 10 keys by requests",
            "Requests per key id (the first GATEWAY_METRICS_MAX_KEYS keys a replica sees; the "
            'rest are summed as key="other").',
            (q(f"topk(10, sum by (key) (rate(gateway_key_requests_total[{RATE}])))", "{{key}}"),),
            unit="reqps",
        ),
        Panel(
            "Top 10 keys by 429s",
            "Requests refused for a rate limit, per key.",
            (
                q(
                    f"topk(10, sum by (key) (rate(gateway_key_rate_limited_total[{RATE}])))",
                    "{{key}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "429s by limit",
            "Which limit was crossed: requests/min, tokens/min or concurrency.",
            (q(f"sum by (limit) (rate(gateway_rate_limited_total[{RATE}]))", "{{limit}}"),),
            unit="reqps",
        ),
        Panel(
            "Authentication failures",
            "Requests refused by API-key checks, by reason.",
            (q(f"sum by (reason) (rate(gateway_auth_failures_total[{RATE}]))", "{{reason}}"),),
            unit="reqps",
        ),
    ),
)

CANARY = Dashboard(
    uid="vlm-canary",
    title="vlm-serve / Canary vs stable",
    description="The canary worker pool beside the stable one: traffic, errors, latency, load.",
    panels=(
        Panel(
            "Attempts per pool",
            "Worker exchanges per second, by pool.",
            (q(f"sum by (pool) (rate(gateway_worker_requests_total[{RATE}]))", "{{pool}}"),),
            unit="reqps",
        ),
        Panel(
            "Error ratio per pool",
            "Failed worker exchanges / all, by pool. VlmCanaryErrorRateAboveStable compares them.",
            (
                q(
                    "sum by (pool) "
                    f'(rate(gateway_worker_requests_total{{outcome="error"}}[{RATE}])) '
                    f"/ sum by (pool) (rate(gateway_worker_requests_total[{RATE}]))",
                    "{{pool}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Gateway answer latency p99 per pool",
            "Successful worker attempts as the gateways timed them: the whole answer, or the "
            "first chunk when streamed.",
            (
                q(
                    p_quantile(0.99, "gateway_pool_answer_seconds", "pool, stream"),
                    "{{pool}} stream={{stream}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Engine TTFT p99 per pool",
            "vLLM's own time to first token, by pool.",
            (q(p_quantile(0.99, "vllm:time_to_first_token_seconds", "pool"), "{{pool}}"),),
            unit="s",
        ),
        Panel(
            "Engine inter-token latency p99 per pool",
            "vLLM's own inter-token latency, by pool.",
            (q(p_quantile(0.99, "vllm:inter_token_latency_seconds", "pool"), "{{pool}}"),),
            unit="s",
        ),
        Panel(
            "Generated tokens per second per pool",
            "Throughput of each pool.",
            (q(f"sum by (pool) (rate(vllm:generation_tokens_total[{RATE}]))", "{{pool}}"),),
        ),
        Panel(
            "Queue per pool",
            "Requests waiting on the workers, by pool.",
            (q("sum by (pool) (vllm:num_requests_waiting)", "{{pool}}"),),
        ),
        Panel(
            "KV cache per pool",
            "The fullest KV cache, by pool (1 = full).",
            (q("max by (pool) (vllm:kv_cache_usage_perc)", "{{pool}}"),),
            unit="percentunit",
            max=1,
        ),
    ),
)
