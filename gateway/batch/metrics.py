"""The batch runner's metrics (its own /metrics): what it did, and the state of every batch
as the database holds it (every runner reports the same figures: take their max)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LINE_OUTCOMES: Final = ("done", "failed", "retried", "lost")
_LINE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lines = Counter(
            "gateway_batch_line_outcomes",
            "Batch lines this runner finished, by outcome: done (the output file), failed (the "
            "error file), retried (a 429, 5xx or no answer: tried again later), lost (the "
            "line's lease ran out and another runner answered it).",
            ["outcome"],
            registry=r,
        )
        self.line_seconds = Histogram(
            "gateway_batch_line_seconds",
            "One line's request through the gateway, sent to answered.",
            buckets=_LINE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_batch_lines_in_flight",
            "Lines this runner has sent and not finished.",
            registry=r,
        )
        self.feeding = Gauge(
            "gateway_batch_feeding",
            "1 while the workers' queues leave room for batch lines (idle capacity), else 0.",
            registry=r,
        )
        self.queued = Gauge(
            "gateway_batch_lines_queued",
            "Lines of in-progress batches not yet answered (pending or running), all runners.",
            registry=r,
        )
        self.active = Gauge(
            "gateway_batch_active",
            "Batches not in a final status (validating, in_progress, finalizing, cancelling).",
            registry=r,
        )
        self.oldest_age = Gauge(
            "gateway_batch_oldest_active_age_seconds",
            "Age of the oldest batch not yet in a final status (0 when none).",
            registry=r,
        )
        self.stalled = Gauge(
            "gateway_batch_stalled_seconds",
            "The longest any in-progress batch has gone without a line finishing (0 when none).",
            registry=r,
        )
        for outcome in LINE_OUTCOMES:
            self.lines.labels(outcome)
