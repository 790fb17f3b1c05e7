"""Interaction log benchmark: batched multi-row inserts against per-row autocommit.

Both modes write the same records (one row in ``interactions`` plus its image row in
``interaction_images``) through the same async driver (asyncmy) into a scratch database
``vlm_bench_<random>`` on the machine's MariaDB, dropped at the end:

* per-row: one INSERT (and its image row) per record, each record its own committed
  transaction: what a naive request logger does.
* batched: the gateway's InteractionWriter end to end: submit() every record, then flush();
  multi-row INSERT ... ON DUPLICATE KEY UPDATE batches of ``batch_size``.

Target (issue 5): batched >= 10x per-row. Run: ``python -m loadtest.bench.interactions``.
Environment: BENCH_LOG_ADMIN_URL (default mysql://root@127.0.0.1:3306), BENCH_LOG_PER_ROW
(records, default 2000), BENCH_LOG_BATCHED (default 20000), BENCH_LOG_BATCH_SIZE (200).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from itertools import chain
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from gateway.db.engine import create_database_if_missing, create_log_engine, drop_database
from gateway.db.migrate import upgrade
from gateway.interactions import (
    InteractionLogMetrics,
    InteractionLogSettings,
    InteractionRecord,
    InteractionWriter,
    LoggedImage,
)
from gateway.interactions.records import RowPolicy, image_rows, row_params, to_row
from gateway.interactions.statements import image_insert_sql, insert_sql
from loadtest.bench import logging_overhead
from loadtest.bench.worker import machine_description
from worker.profiles import REPO_ROOT

RESULTS = REPO_ROOT / "loadtest" / "results"

ADMIN_URL = os.environ.get("BENCH_LOG_ADMIN_URL", "mysql://root@127.0.0.1:3306")
PER_ROW = int(os.environ.get("BENCH_LOG_PER_ROW", "2000"))
BATCHED = int(os.environ.get("BENCH_LOG_BATCHED", "20000"))
BATCH_SIZE = int(os.environ.get("BENCH_LOG_BATCH_SIZE", "200"))
TARGET_RATIO = 10.0
IMAGE = LoggedImage("e" * 64, 187_311, 1280, 960, "jpeg")


def record(prefix: str, i: int) -> InteractionRecord:
    now = time.time_ns() // 1_000_000
    return InteractionRecord(
        request_id=f"{prefix}-{i}", received_at_ms=now, finished_at_ms=now + 850,
        ttft_ms=120.0, endpoint="/v1/chat/completions", shape="chat", status_code=200,
        stream=True, cache="miss", api_key_id="key_bench", client_ip="203.0.113.9",
        user_agent="bench/1.0", model="qwen3-vl-tiny", profile="cpu-tiny",
        prompt="Is this bag real leather? Is it a good gift for my mother? " * 3,
        answer="It appears to be full-grain leather with even stitching. " * 4,
        images=(IMAGE,), worker_id="http://127.0.0.1:8100", prompt_tokens=980,
        completion_tokens=60, moderation="pass",
    )  # fmt: skip


async def per_row(url: str, count: int) -> float:
    engine = create_log_engine(url)
    policy = RowPolicy()
    rows = [to_row(record("row", i), policy) for i in range(count)]
    try:
        started = time.perf_counter()
        for row in rows:
            async with engine.begin() as conn:  # one commit per record
                await conn.exec_driver_sql(insert_sql(1), row_params(row))
                images = image_rows(row)
                await conn.exec_driver_sql(
                    image_insert_sql(len(images)), tuple(chain.from_iterable(images))
                )
        return count / (time.perf_counter() - started)
    finally:
        await engine.dispose()


async def batched(url: str, count: int, spool_dir: Path) -> tuple[float, dict[str, float]]:
    engine = create_log_engine(url)
    settings = InteractionLogSettings(
        database_url=SecretStr(url),
        spool_path=spool_dir / "spool.jsonl",
        batch_size=BATCH_SIZE,
        queue_size=max(count, 10_000),
    )
    metrics = InteractionLogMetrics(CollectorRegistry())
    writer = InteractionWriter(engine, settings, metrics)
    records = [record("batch", i) for i in range(count)]
    await writer.start()
    try:
        started = time.perf_counter()
        submit_started = time.perf_counter()
        for item in records:
            writer.submit(item)
        submit_s = time.perf_counter() - submit_started
        await writer.flush()
        elapsed = time.perf_counter() - started
    finally:
        await writer.close()
        await engine.dispose()
    written = metrics.registry.get_sample_value(
        "gateway_interactions_written_total", {"path": "direct"}
    )
    assert written == count, f"wrote {written} of {count} (spooled: MySQL unavailable?)"
    return count / elapsed, {"submit_us_per_record": submit_s / count * 1e6}


async def run(url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vlm-bench-log-") as spool_dir:
        per_row_rate = await per_row(url, PER_ROW)
        batched_rate, extra = await batched(url, BATCHED, Path(spool_dir))
    return {
        "per_row_rows_per_s": round(per_row_rate, 1),
        "batched_rows_per_s": round(batched_rate, 1),
        "ratio": round(batched_rate / per_row_rate, 1),
        "target_ratio": TARGET_RATIO,
        "per_row_records": PER_ROW,
        "batched_records": BATCHED,
        "batch_size": BATCH_SIZE,
        "submit_us_per_record": round(extra["submit_us_per_record"], 2),
        "machine": machine_description(),
    }


def main() -> int:
    url = f"{ADMIN_URL.rstrip('/')}/vlm_bench_{uuid.uuid4().hex[:10]}"
    create_database_if_missing(url)
    try:
        upgrade(url)
        result = asyncio.run(run(url))
        run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-interactions"
        overhead = logging_overhead.measure(url, run_dir)
    finally:
        drop_database(url)
    print(
        f"per-row autocommit : {result['per_row_rows_per_s']:>10,.0f} rows/s "
        f"({result['per_row_records']} records, one commit each)"
    )
    print(
        f"batched (writer)   : {result['batched_rows_per_s']:>10,.0f} rows/s "
        f"({result['batched_records']} records, batches of {result['batch_size']})"
    )
    ok = result["ratio"] >= TARGET_RATIO
    print(
        f"ratio              : {result['ratio']:>10.1f}x (target >= {TARGET_RATIO:.0f}x: "
        f"{'met' if ok else 'NOT met'})"
    )
    print(f"submit() cost      : {result['submit_us_per_record']:>10.2f} us per record")
    on_off = overhead["logging_on_over_off"]["median"]
    print(
        f"gateway, logging on/off: {on_off:.3f} of the throughput on cache hits "
        f"(target >= 0.95: {'met' if on_off >= 0.95 else 'NOT met'})"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {**_report_shape(result), **overhead}
    (RESULTS / "bench-interactions.json").write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def _report_shape(result: dict[str, Any]) -> dict[str, Any]:
    """The schema loadtest/report/build.py reads (one round: single values)."""
    return {
        "machine": result["machine"],
        "workload": f"{result['per_row_records']} per-row autocommit inserts against "
        f"{result['batched_records']} records through the writer (batches of "
        f"{result['batch_size']})",
        "rounds": 1,
        "rows_per_second": {
            "batched": result["batched_rows_per_s"],
            "per_row": result["per_row_rows_per_s"],
        },
        "batched_over_per_row": result["ratio"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
