"""The interaction log at scale: `stats` and `top` over a month of synthetic rows, before
and after the daily partitions (migration 0006), for 1 and 10 million rows.

For each size: a scratch database ``vlm_bench_scale_<random>`` on the machine's MariaDB
(dropped at the end) at the revision before partitions; N rows (and one image row each)
spread evenly over the last 30 days, generated inside MariaDB from its SEQUENCE engine;
the ops commands timed on the plain table; the migration to daily partitions timed; the
same commands timed again. Each command runs 3 times; the median is reported.

Run: ``python -m loadtest.bench.interactions_scale`` (BENCH_SCALE_ROWS=1000000,10000000,
BENCH_LOG_ADMIN_URL=mysql://root@127.0.0.1:3306). Not in `make test`: 10 million rows take
minutes to write.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
import uuid
from typing import Any

from gateway.db.engine import create_database_if_missing, create_sync_engine, drop_database
from gateway.db.migrate import upgrade
from gateway.interactions.cli import main as cli
from worker.profiles import REPO_ROOT

RESULTS = REPO_ROOT / "loadtest" / "results"
DAY_MS = 86_400_000
SPAN_MS = 30 * DAY_MS
CHUNK = 1_000_000
BEFORE_PARTITIONS = "0005"
COMMANDS: dict[str, list[str]] = {
    "stats 24h": ["stats", "--hours", "24"],
    "stats 7d": ["stats", "--hours", "168"],
    "top questions 24h": ["top", "questions", "--hours", "24"],
    "top images 24h": ["top", "images", "--hours", "24"],
}


def _fill(url: str, rows: int, now_ms: int) -> float:
    """N rows over the last 30 days, in chunks of a million; seconds taken."""
    engine = create_sync_engine(url)
    started = time.perf_counter()
    try:
        for offset in range(0, rows, CHUNK):
            n = min(CHUNK, rows - offset)
            # Row k (0-based overall) was received (k / rows) of the span ago.
            at = f"{now_ms} - FLOOR((seq + {offset}) * {SPAN_MS} / {rows})"
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO interactions (request_id, received_at_ms, latency_ms, "
                    "endpoint, shape, status_code, cache, prompt_sha256, prompt) "
                    f"SELECT CONCAT('bench-', seq + {offset}), {at}, "
                    "MOD(seq * 7919, 5000) / 10.0, '/v1/chat/completions', 'chat', "
                    "CASE MOD(seq, 100) WHEN 0 THEN 503 WHEN 1 THEN 429 ELSE 200 END, "
                    "ELT(MOD(seq, 4) + 1, 'hit', 'miss', 'miss', 'coalesced'), "
                    "CONCAT('q', MOD(seq, 1000)), CONCAT('question number ', MOD(seq, 1000)) "
                    f"FROM seq_0_to_{n - 1}"
                )
                conn.exec_driver_sql(
                    "INSERT INTO interaction_images (request_id, position, digest, "
                    f"received_at_ms) SELECT CONCAT('bench-', seq + {offset}), 0, "
                    f"CONCAT('sha256:', MOD(seq, 5000)), {at} FROM seq_0_to_{n - 1}"
                )
    finally:
        engine.dispose()
    return time.perf_counter() - started


def _time_commands(url: str) -> dict[str, float]:
    timings: dict[str, float] = {}
    for name, args in COMMANDS.items():
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            code = cli(["--url", url, *args], out=io.StringIO())
            runs.append(time.perf_counter() - started)
            assert code == 0, name
        timings[name] = statistics.median(runs)
    return timings


def bench(rows: int, admin_url: str) -> dict[str, Any]:
    url = f"{admin_url.rstrip('/')}/vlm_bench_scale_{uuid.uuid4().hex[:8]}"
    create_database_if_missing(url)
    try:
        upgrade(url, BEFORE_PARTITIONS)
        fill_s = _fill(url, rows, time.time_ns() // 1_000_000)
        plain = _time_commands(url)
        started = time.perf_counter()
        upgrade(url)
        migrate_s = time.perf_counter() - started
        partitioned = _time_commands(url)
    finally:
        drop_database(url)
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "migrate_to_partitions_s": round(migrate_s, 1),
        "plain_s": {k: round(v, 3) for k, v in plain.items()},
        "partitioned_s": {k: round(v, 3) for k, v in partitioned.items()},
    }


def main() -> int:
    admin_url = os.environ.get("BENCH_LOG_ADMIN_URL", "mysql://root@127.0.0.1:3306")
    sizes = [int(n) for n in os.environ.get("BENCH_SCALE_ROWS", "1000000,10000000").split(",")]
    results = []
    for rows in sizes:
        result = bench(rows, admin_url)
        results.append(result)
        print(
            f"{rows:>10} rows over 30 days: filled in {result['fill_s']} s, "
            f"migrated to daily partitions in {result['migrate_to_partitions_s']} s"
        )
        for name in COMMANDS:
            print(
                f"  {name:18} plain {result['plain_s'][name]:>8.3f} s   "
                f"partitioned {result['partitioned_s'][name]:>8.3f} s"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-interactions-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
