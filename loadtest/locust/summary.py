"""The summary the locustfile writes when Locust quits (``--summary-json``): Locust's
statistics with the custom TTFT and ITL entries kept out of the HTTP aggregate, the
workload that was planned, and the X-Cache tally of this process's users.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from locust.env import Environment
from locust.stats import StatsEntry

from loadtest.locust.workload import Workload

# Entries the locustfile adds that are not requests: time to first token, inter-token gaps.
CUSTOM_TYPES = ("TTFT", "ITL")
SUMMARY_PERCENTILES = (0.5, 0.95, 0.99)


class RunState:
    """What the users of this process share: the workload and the X-Cache tally."""

    def __init__(self) -> None:
        self.workload: Workload | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.x_cache: Counter[tuple[str, str, str]] = Counter()
        self.user_ids = itertools.count()


def _entry_summary(entry: StatsEntry) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "type": entry.method,
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "failure_ratio": entry.fail_ratio,
        "rps": entry.total_rps,
        "avg_ms": entry.avg_response_time,
        "max_ms": entry.max_response_time,
    }
    for percent in SUMMARY_PERCENTILES:
        key = f"p{round(percent * 100)}_ms"
        summary[key] = entry.get_response_time_percentile(percent) if entry.num_requests else None
    return summary


def summary_of(environment: Environment, state: RunState) -> dict[str, Any]:
    """Locust's statistics with the custom TTFT/ITL entries kept out of the HTTP aggregate."""
    stats = environment.stats
    http = StatsEntry(stats, "HTTP", "", use_response_times_cache=False)
    entries = []
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method or "", e.name)):
        entries.append(_entry_summary(entry))
        if entry.method not in CUSTOM_TYPES:
            http.extend(entry)
    custom = {
        kind: _merged_summary(
            environment, kind, [e for e in stats.entries.values() if e.method == kind]
        )
        for kind in CUSTOM_TYPES
    }
    errors = [
        {
            "type": e.method,
            "name": e.name,
            "error": e.parse_error(e.error),
            "occurrences": e.occurrences,
        }
        for e in stats.errors.values()
    ]
    workload = state.workload
    return {
        "host": environment.host,
        "started_at": state.started_at,
        "stopped_at": state.stopped_at,
        "users": getattr(environment.parsed_options, "num_users", None),
        "workload": _workload_summary(workload) if workload else None,
        "http": _entry_summary(http),
        "ttft": custom["TTFT"],
        "itl": custom["ITL"],
        "entries": entries,
        "errors": errors,
        "x_cache": [
            {"shape": shape, "origin": origin, "x_cache": value, "count": count}
            for (shape, origin, value), count in sorted(state.x_cache.items())
        ],
    }


def _merged_summary(
    environment: Environment, kind: str, entries: list[StatsEntry]
) -> dict[str, Any]:
    merged = StatsEntry(environment.stats, kind, kind, use_response_times_cache=False)
    for entry in entries:
        merged.extend(entry)
    return _entry_summary(merged)


def _workload_summary(workload: Workload) -> dict[str, Any]:
    config = workload.config
    return {
        "model": config.model,
        "repeat_share": config.repeat_share,
        "popular_products": config.popular_products,
        "shapes": dict(config.shape_weights),
        "sizes": dict(config.size_weights),
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "chinese_share": config.chinese_share,
        "two_image_share": config.two_image_share,
        "seed": config.seed,
        "salt": workload.salt,
    }
