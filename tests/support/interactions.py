"""Helpers for the interaction-writer tests (tests/test_interactions_mariadb.py): records,
writer settings, a running writer, and reading back rows and counters."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.interactions import (
    InteractionLogMetrics,
    InteractionLogSettings,
    InteractionRecord,
    InteractionWriter,
    LoggedImage,
)
from gateway.interactions.records import COLUMNS

NOW_MS = time.time_ns() // 1_000_000
BAG = LoggedImage("b" * 64, 245_001, 1024, 768, "jpeg")
LABEL = LoggedImage("c" * 64, 51_234, 640, 480, "png")


def settings_for(url: str, spool: Path, **overrides: Any) -> InteractionLogSettings:
    values: dict[str, Any] = {
        "database_url": SecretStr(url),
        "spool_path": spool,
        "flush_interval_s": 0.05,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        "connect_timeout_s": 1.0,
    }
    values.update(overrides)
    return InteractionLogSettings(**values)


@asynccontextmanager
async def running(
    engine: AsyncEngine | None,
    settings: InteractionLogSettings,
    on_durable: Callable[[Sequence[str]], None] | None = None,
) -> AsyncIterator[tuple[InteractionWriter, InteractionLogMetrics]]:
    metrics = InteractionLogMetrics(CollectorRegistry())
    writer = InteractionWriter(engine, settings, metrics, on_durable=on_durable)
    await writer.start()
    try:
        yield writer, metrics
    finally:
        await writer.close()


def make(request_id: str, **overrides: Any) -> InteractionRecord:
    values: dict[str, Any] = {
        "request_id": request_id,
        "received_at_ms": NOW_MS,
        "finished_at_ms": NOW_MS + 120,
        "endpoint": "/v1/chat/completions",
        "shape": "chat",
        "status_code": 200,
        "model": "qwen3-vl-tiny",
        "prompt": "is this bag real leather?",
    }
    values.update(overrides)
    return InteractionRecord(**values)


def fetch(engine: Engine, where: str, params: Sequence[Any] = ()) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT * FROM interactions WHERE {where}", tuple(params))
        rows = [dict(r) for r in result.mappings()]
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["request_id"].decode("utf-8")
        assert key not in out
        out[key] = row
    return out


def by_prefix(engine: Engine, prefix: str) -> dict[str, dict[str, Any]]:
    return fetch(engine, "request_id LIKE %s", [prefix + "%"])


def normalised(db_row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row in the shape of records.to_row, to compare column by column."""
    row = {name: db_row[name] for name in COLUMNS}
    row["request_id"] = row["request_id"].decode("utf-8")
    if row["images"] is not None:
        row["images"] = json.loads(row["images"])
    return row


_LABEL = {"written": "path", "duplicates": "path", "spooled": "reason", "dropped": "reason"}


def metric(metrics: InteractionLogMetrics, name: str, label: str | None = None) -> float:
    """A counter's value (``name`` without the gateway_interactions_ prefix and _total)."""
    labels = {_LABEL[name]: label} if label is not None else {}
    value = metrics.registry.get_sample_value(f"gateway_interactions_{name}_total", labels)
    assert value is not None, name
    return value
