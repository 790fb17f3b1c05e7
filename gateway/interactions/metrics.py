"""Prometheus metrics of the interaction log, registered on the registry passed in.

Alerted on (deploy/prometheus/rules/): spool_bytes / spool_max_bytes rising (MySQL is down
or slow), any increase of dropped_total (records lost), db_up == 0 for minutes,
poisoned_total (a code path sends values the schema refuses), and spool_rows last seen on a
gateway that is gone (its spool went with the pod unless its volume outlives it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SPOOL_REASONS = ("db_unavailable", "queue_full", "shutdown")
DROP_REASONS = ("spool_full", "spool_error", "rejected", "closed", "invalid")
WRITE_PATHS = ("direct", "replay")

_BATCH_ROWS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000)
_BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class InteractionLogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        self.submitted = Counter(
            "gateway_interactions_submitted",
            "Interaction records handed to the log writer.",
            registry=r,
        )
        self.written = Counter(
            "gateway_interactions_written",
            "Records in committed MySQL batches, by path (direct from the queue, replay "
            "from the spool). Replayed duplicates are counted again but stored once.",
            ["path"],
            registry=r,
        )
        self.spooled = Counter(
            "gateway_interactions_spooled",
            "Records appended to the local spool, by reason (db_unavailable: MySQL down, "
            "slow or refusing; queue_full; shutdown).",
            ["reason"],
            registry=r,
        )
        self.poisoned = Counter(
            "gateway_interactions_poisoned",
            "Records MySQL refused as submitted, stored sanitized with poisoned=1.",
            registry=r,
        )
        self.dropped = Counter(
            "gateway_interactions_dropped",
            "Records lost, by reason (spool_full, spool_error, rejected: refused even in "
            "minimal form and kept in the rejected file, closed: submitted after close, "
            "invalid: could not be turned into a row).",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "gateway_interactions_duplicates",
            "Rows MySQL already held, so their INSERT was a no-op, by path. On replay after a "
            "crash or a write time-out that landed, expected; on the direct path, a key "
            "collision that would have merged two interactions: investigate.",
            ["path"],
            registry=r,
        )
        self.spool_corrupt_lines = Counter(
            "gateway_interactions_spool_corrupt_lines",
            "Spool lines that could not be parsed on replay (a torn write at a crash).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_interactions_queue_depth",
            "Records waiting in memory for the next batch.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "gateway_interactions_spool_bytes",
            "Bytes in the local spool waiting for replay (active and rotated files).",
            registry=r,
        )
        self.spool_rows = Gauge(
            "gateway_interactions_spool_rows",
            "Records in the local spool waiting for replay (what a pod that ends now would "
            "take with it when its spool is on an emptyDir).",
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "gateway_interactions_spool_oldest_age_seconds",
            "Age of the oldest spooled record not yet in MySQL (0 when the spool is empty).",
            registry=r,
        )
        self.spool_max_bytes = Gauge(
            "gateway_interactions_spool_max_bytes",
            "The spool's size limit; past it new records are dropped.",
            registry=r,
        )
        self.db_up = Gauge(
            "gateway_interactions_db_up",
            "1 while the writer's last MySQL write or probe succeeded, else 0.",
            registry=r,
        )
        self.batch_rows = Histogram(
            "gateway_interactions_batch_rows",
            "Records per batch sent to MySQL.",
            buckets=_BATCH_ROWS_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "gateway_interactions_batch_seconds",
            "Time to write one batch to MySQL (successful batches).",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        for reason in SPOOL_REASONS:
            self.spooled.labels(reason)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for path in WRITE_PATHS:
            self.written.labels(path)
            self.duplicates.labels(path)
