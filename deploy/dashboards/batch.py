"""The batches row (on the Data path dashboard): lines done and failed, the queue, the
oldest batch, progress, and whether the workers leave room for batch lines."""

from __future__ import annotations

from deploy.dashboards.spec import RATE, Panel, q

# The runner's series (gateway/batch/metrics.py). The live test does not start a runner;
# tests/test_batch_engine.py checks these names on a runner that ran a batch.
NEEDS_RUNNER = "needs the batch runner, which the live test does not start"

BATCH_PANELS: tuple[Panel, ...] = (
    Panel(
        "Batches: created, and lines the gateways served",
        "POST /v1/batches per second; requests the batch runner sent for batch lines.",
        (
            q(f"sum(rate(gateway_batches_created_total[{RATE}]))", "batches created"),
            q(f"sum(rate(gateway_batch_line_requests_total[{RATE}]))", "batch line requests"),
        ),
        unit="reqps",
    ),
    Panel(
        "Batch lines: outcomes",
        "done (output file), failed (error file), retried (429, 5xx, no answer), lost (a "
        "lapsed lease: another runner answered).",
        (q(f"sum by (outcome) (rate(gateway_batch_line_outcomes_total[{RATE}]))", "{{outcome}}"),),
        unit="reqps",
        not_here=NEEDS_RUNNER,
    ),
    Panel(
        "Batch lines: queued and in flight",
        "Lines of in-progress batches not yet answered (all runners); lines in flight.",
        (
            q("max(gateway_batch_lines_queued)", "queued"),
            q("sum(gateway_batch_lines_in_flight)", "in flight"),
        ),
        not_here=NEEDS_RUNNER,
    ),
    Panel(
        "Batches: oldest active, longest without progress",
        "Age of the oldest batch not yet final; the longest an in-progress batch has gone "
        "without a finished line (VlmBatchStalled fires past 15 min).",
        (
            q("max(gateway_batch_oldest_active_age_seconds)", "oldest active"),
            q("max(gateway_batch_stalled_seconds)", "without progress"),
        ),
        unit="s",
        not_here=NEEDS_RUNNER,
    ),
    Panel(
        "Batch feeding: idle capacity",
        "1 while the workers' queues leave room for batch lines; 0: online traffic has them.",
        (q("min(gateway_batch_feeding)", "feeding"),),
        not_here=NEEDS_RUNNER,
    ),
)
