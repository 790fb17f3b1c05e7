"""The benchmark report: every section from sample JSON, plots drawn, absent sections marked,
targets judged, unreadable files contained."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.report.build import NOT_MEASURED, SECTIONS, Stat, build_report

MACHINE = "x86_64, 2 cores, Test CPU"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def s(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high}


def _endpoint(thru: float, ttft: float, itl: float, ratio: float, added: float) -> Any:
    return {
        "request_throughput": s(thru, thru - 1, thru + 1),
        "median_ttft_ms": s(ttft, ttft - 5, ttft + 5),
        "p99_ttft_ms": s(ttft * 2, ttft * 2 - 10, ttft * 2 + 10),
        "median_itl_ms": s(itl, itl - 0.1, itl + 0.1),
        "p99_itl_ms": s(itl * 50, itl * 40, itl * 60),
        "throughput_ratio": ratio,
        "added_median_ttft_ms": added,
    }


GATEWAY = {
    "machine": MACHINE, "workload": "96 requests, concurrency 16", "rounds": 3, "gateways": 2,
    "summary": {
        "direct": _endpoint(22.9, 469, 2.9, 1.0, 0.0),
        "nginx": _endpoint(22.7, 471, 2.9, 0.99, 2.0),
        "nginx+gateway": _endpoint(22.4, 472, 3.0, 0.978, 3.1),
    },
}  # fmt: skip
CACHE = {
    "machine": MACHINE, "workload": "640x480 photo, 32 tokens", "rounds": 3,
    "hit": {"throughput_rps": s(900, 850, 950), "median_latency_ms": s(1.2, 1.0, 1.5)},
    "miss": {"throughput_rps": s(20, 18, 22), "median_latency_ms": s(600, 550, 700)},
    "hit_over_miss_throughput": s(45, 40, 50),
    "lookup_added_median_ms": s(3.5, 2.5, 4.0),
    "coalescing": {"concurrent_requests": 50, "replicas": 2, "worker_requests": 1, "fan_in": 50},
}  # fmt: skip
SCALING = {
    "machine": MACHINE, "workload": "1 worker, 1 or 2 gateways", "rounds": 3,
    "workloads": {
        "misses (vLLM random-mm)": {
            "description": "every request reaches the worker",
            "throughput_rps": {"1": s(20, 19, 21), "2": s(20.4, 19, 21)},
            "p99_latency_ms": {"1": s(900, 850, 950), "2": s(880, 860, 900)},
            "ratio": s(1.02, 0.97, 1.05),
        },
        "repeated photo": {
            "description": "cache hits",
            "throughput_rps": {"1": s(400, 380, 420), "2": s(560, 500, 600)},
            "ratio": s(1.4, 1.3, 1.5),
            "x_cache": {"hit": 999, "miss": 1},
        },
    },
}  # fmt: skip
WORKERS = {
    **SCALING,
    "drills": {"worker SIGKILL": {"requests": 500, "client_errors": 0,
                                  "p99_latency_ms": s(1500, 1400, 1600)}},
    "targets": [{"name": "Worker SIGKILL drill: client errors", "threshold": "0",
                 "measured": "0", "met": True}],
}  # fmt: skip
LOCUST = {
    "host": "http://127.0.0.1:8080", "users": 16, "duration_s": 60, "machine": MACHINE,
    "workload": {"model": "qwen3-vl-tiny", "repeat_share": 0.3, "shapes": {"chat": 1.0},
                 "max_tokens": 64},
    "http": {"type": "", "name": "HTTP", "requests": 300, "failures": 0, "p50_ms": 500,
             "p95_ms": 2300, "p99_ms": 2900},
    "entries": [
        {"type": "POST", "name": "/v1/chat/completions", "requests": 300, "failures": 0,
         "p50_ms": 500, "p95_ms": 2300, "p99_ms": 2900},
        {"type": "TTFT", "name": "/v1/chat/completions [stream]", "requests": 80,
         "failures": 0, "p50_ms": 190, "p95_ms": 2000, "p99_ms": 2200},
        {"type": "ITL", "name": "/v1/chat/completions [stream]", "requests": 3700,
         "failures": 0, "p50_ms": 3, "p95_ms": 11, "p99_ms": 60},
    ],
    "x_cache": [{"shape": "chat", "origin": "repeated", "x_cache": "hit", "count": 90}],
    "thresholds": [
        {"name": "HTTP error rate", "limit": "<= 1.00%", "measured": "0.00% (0/300)",
         "met": True},
        {"name": "HTTP p95 response time", "limit": "<= 2000 ms", "measured": "2300 ms",
         "met": False},
    ],
    "passed": False,
}  # fmt: skip


def _write(results: Path, name: str, data: Any) -> None:
    path = results / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    results = tmp_path_factory.mktemp("results")
    _write(results, "bench-gateway.json", GATEWAY)
    _write(results, "bench-cache.json", CACHE)
    _write(results, "bench-replicas.json", SCALING)
    _write(results, "bench-workers.json", WORKERS)
    _write(results, "locust/summary.json", LOCUST)
    # bench-interactions.json is left absent on purpose.
    path = build_report(results, now=NOW)
    return results, path.read_text()


def _section(report: str, title: str) -> str:
    start = report.index(f"\n## {title}\n")
    end = report.find("\n## ", start + 1)
    return report[start : end if end >= 0 else None]


def _target_row(report: str, name: str) -> str:
    (row,) = [line for line in report.splitlines() if line.startswith(f"| {name} |")]
    return row


def test_every_section_is_written_with_its_plot(full_report: tuple[Path, str]) -> None:
    results, report = full_report
    assert report.startswith("# Benchmark report")
    assert "Generated 2026-11-24 12:00 UTC" in report
    assert f"Machines: `{MACHINE}`" in report
    for spec in SECTIONS:
        assert f"\n## {spec.title}\n" in report
    for key in ("gateway", "streaming", "cache", "replicas", "workers", "locust"):
        png = results / "plots" / f"{key}.png"
        assert png.read_bytes().startswith(PNG_MAGIC), key
        assert f"(plots/{key}.png)" in report
    assert not (results / "plots" / "interactions.png").exists()


def test_an_absent_benchmark_is_marked_not_measured(full_report: tuple[Path, str]) -> None:
    _, report = full_report
    section = _section(report, "Interaction log: batched against per-row")
    assert NOT_MEASURED in section
    assert "bench-interactions.json" in section
    row = _target_row(report, "Interaction log: batched / per-row rows/s (issue 5)")
    assert NOT_MEASURED in row


def test_targets_are_judged(full_report: tuple[Path, str]) -> None:
    _, report = full_report
    assert "| met |" in _target_row(report, "Gateway throughput / direct (issue 3)")
    assert "| met |" in _target_row(report, "Added median TTFT through Nginx + gateway (issue 3)")
    assert "| met |" in _target_row(report, "Cache hit throughput / miss throughput (issue 4)")
    lookup = _target_row(report, "Cache lookup added to a miss, median (issue 4)")
    assert "**missed**" in lookup
    assert "3.50 ms (2.50–4.00)" in lookup
    assert "| met |" in _target_row(report, "Worker SIGKILL drill: client errors")
    assert "**missed**" in _target_row(report, "Locust: HTTP p95 response time")
    assert "5 met, 2 missed, 8 not measured yet." in report


def test_sections_show_ratios_with_their_spread(full_report: tuple[Path, str]) -> None:
    _, report = full_report
    gateway = _section(report, "Gateway overhead against direct-to-worker")
    assert "| nginx+gateway | 22.40 (21.40–23.40) |" in gateway
    assert "| 0.978 | +3.1 |" in gateway
    streaming = _section(report, "Streaming inter-token latency: Nginx + gateway against direct")
    assert "| nginx+gateway | 3.00 (2.90–3.10) |" in streaming
    replicas = _section(report, "1 against 2 gateway replicas")
    assert "**1.400 (1.300–1.500)**" in replicas
    assert "hit 999, miss 1" in replicas
    workers = _section(report, "1 against 2 workers")
    assert "| worker SIGKILL | 500 | 0 | 1500 (1400–1600) |" in workers
    cache = _section(report, "Answer cache: hit against miss, and coalescing fan-in")
    assert "fan-in **50:1**" in cache
    assert f"Measured on: {MACHINE}" in cache
    locust = _section(report, "Load test (Locust)")
    assert "repeated → hit: 90" in locust


def test_nothing_measured_gives_a_report_of_pending_targets(tmp_path: Path) -> None:
    report = build_report(tmp_path, now=NOW).read_text()
    assert report.count(f"*{NOT_MEASURED}*") == len(SECTIONS)
    assert "0 met, 0 missed, 12 not measured yet." in report
    assert not (tmp_path / "plots").exists()


def test_an_unreadable_file_is_contained(tmp_path: Path) -> None:
    (tmp_path / "bench-gateway.json").write_text("{not json")
    _write(tmp_path, "bench-cache.json", {"machine": MACHINE, "hit": {}})
    _write(tmp_path, "bench-replicas.json", SCALING)
    report = build_report(tmp_path, now=NOW).read_text()
    assert "*could not be read*: `bench-gateway.json`" in report
    assert "*could not be read*: `bench-cache.json`" in report
    assert "**1.400 (1.300–1.500)**" in report  # the other sections are still there


def test_stat_accepts_numbers_and_dicts_and_refuses_the_rest() -> None:
    assert Stat.parse(2) == Stat(2.0)
    assert Stat.parse(s(1, 0.5, 2)).fmt(".1f", " ms") == "1.0 ms (0.5–2.0)"
    assert Stat.parse({"median": 3}).fmt(".0f") == "3"
    for bad in (True, "1", [1], {"mean": 1}):
        with pytest.raises(ValueError, match="not a measurement"):
            Stat.parse(bad)


def _anchor_stats(**medians: float) -> dict[str, dict[str, float]]:
    return {name: {"median": v, "min": v, "max": v} for name, v in medians.items()}


def test_the_anchors_section_shows_both_tables_and_the_benchmarks_verdicts(
    tmp_path: Path,
) -> None:
    miss = {
        name: {
            "request_throughput": {"median": thru, "min": thru, "max": thru},
            "median_ttft_ms": {"median": ttft, "min": ttft, "max": ttft},
        }
        for name, thru, ttft in (("direct", 40.0, 180.0), ("vllm-router", 38.0, 190.0))
    }
    ratios = {
        "direct": {"throughput_ratio": 1.0, "added_median_ttft_ms": 0.0},
        "vllm-router": {"throughput_ratio": 0.95, "added_median_ttft_ms": 10.0},
    }
    hit = {
        "endpoints": {
            "nginx static": {**_anchor_stats(throughput_rps=5000.0, median_latency_ms=2.5),
                             "outcomes": {"other": 600}, "share_of_ceiling": 1.0},
            "nginx+2 gateways": {**_anchor_stats(throughput_rps=500.0, median_latency_ms=30.0),
                                 "outcomes": {"hit": 600}, "share_of_ceiling": 0.1},
        },
        "log_on_over_off": {"median": 0.97, "min": 0.9, "max": 1.0},
    }  # fmt: skip
    targets = [{"name": "Hits: Nginx + 2 gateways / static Nginx", "threshold": "≥ 0.35",
                "measured": "0.100", "met": False}]  # fmt: skip
    _write(tmp_path, "bench-anchors.json", {
        "machine": MACHINE, "workload": "anchors", "rounds": 3, "targets": targets,
        "miss": {"summary": miss, "ratios": ratios}, "hit": hit,
    })  # fmt: skip
    report = build_report(tmp_path, now=NOW).read_text()
    section = report[report.index("## Against the anchors") :]
    assert "| vllm-router | 38.0 | 0.950 | 190.0 | +10.0 |" in section
    assert "| nginx+2 gateways | 500 | 0.100 | 30.00 | hit 600 |" in section
    assert "interaction log on / off on hits: 0.970 (0.900–1.000)" in section
    row = _target_row(report, "Hits: Nginx + 2 gateways / static Nginx")
    assert "| 0.100 | **missed** |" in row
    assert (tmp_path / "plots" / "anchors.png").exists()


def test_the_hits_and_overload_sections_show_their_trees_and_targets(tmp_path: Path) -> None:
    target = {"name": "Hot question answered from the cache under overload, as is [after] "
              "(issue 24)", "threshold": "≥ 99% every round", "measured": "99.90%",
              "met": True}  # fmt: skip
    _write(tmp_path, "bench-overload.json", {
        "machine": MACHINE, "workload": "hot and misses", "rounds": 2, "targets": [target],
        "summary": {"as is [before]": {"hot_hit_share": s(0.8, 0.7, 0.9), "hot_rps": 300},
                    "as is [after]": {"hot_hit_share": s(0.999, 0.999, 1.0), "hot_rps": 900}},
    })  # fmt: skip
    _write(tmp_path, "bench-hits.json", {
        "machine": MACHINE, "workload": "one question", "rounds": 3, "targets": [],
        "summary": {"640x480 JPEG, 69 KB body": {
            "nginx static": {"throughput_rps": 9000, "share_of_static": 1.0},
            "nginx+2 gateways [after]": {"throughput_rps": s(3000, 2900, 3100),
                                         "share_of_static": s(0.33, 0.3, 0.36)}}},
    })  # fmt: skip
    report = build_report(tmp_path, now=NOW).read_text()
    assert "| as is [before] | 0.8000 (0.7000–0.9000) | 300 | — |" in report
    assert "| 640x480 JPEG, 69 KB body | nginx+2 gateways [after] | 3000 (2900–3100) |" in report
    assert "99.90%" in report
    assert (tmp_path / "plots" / "overload.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "plots" / "hits.png").read_bytes().startswith(PNG_MAGIC)
