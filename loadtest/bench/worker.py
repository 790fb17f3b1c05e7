"""make bench-worker: vLLM's benchmark client against one cpu-tiny worker.

Starts its own worker on a free port (or uses BENCH_WORKER_URL), runs several
rounds with their own seeds, and prints request throughput and TTFT/TPOT/ITL
percentiles as the median over the rounds.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

from loadtest.bench.vllm_bench import REPORTED, bench_config_from_env, run_vllm_bench
from localstack.processes import start_worker

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}"


def main() -> None:
    profile, config = bench_config_from_env()
    url = os.environ.get("BENCH_WORKER_URL")
    worker = None
    if not url:
        run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench"
        worker = start_worker(run_dir, profile=profile)
        url = worker.url
    try:
        rounds = [run_vllm_bench(url, config, seed=1000 + i) for i in range(ROUNDS)]
    finally:
        if worker is not None:
            worker.stop()
    print(f"machine: {machine_description()}")
    print(f"workload: {config.describe()}; median of {ROUNDS} rounds (seeds 1000..)")
    for key in REPORTED:
        values = [float(r[key]) for r in rounds]
        unit = "req/s" if key == "request_throughput" else (
            "tok/s" if key.endswith("throughput") else "ms")  # fmt: skip
        print(f"  {key:<20} {statistics.median(values):10.2f} {unit:<6} "
              f"(min {min(values):.2f}, max {max(values):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
