"""Helpers for the Batch API tests: input files, waiting for a batch, reading its files,
and the interaction rows its lines left."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from openai import OpenAI
from openai.types import Batch
from sqlalchemy import text

from gateway.db.engine import create_sync_engine
from tests.support.requests import chat_body

FINAL = ("completed", "failed", "expired", "cancelled")
RUNNER_TOKEN = "test-runner-token"


def chat_line(custom_id: str, question: str, **body: Any) -> dict[str, Any]:
    """An input line: a greedy chat request with a short answer (``body`` adds fields)."""
    request = chat_body(question, **{"max_tokens": 8, "temperature": 0, **body})
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": request,
    }


def jsonl(lines: Iterable[dict[str, Any] | str]) -> bytes:
    return "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
    ).encode()


def run_batch(client: OpenAI, data: bytes, endpoint: str = "/v1/chat/completions") -> Batch:
    uploaded = client.files.create(file=("lines.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]  # the SDK's literal lacks /v1/match
        completion_window="24h",
    )


def wait_for(
    client: OpenAI, batch_id: str, statuses: tuple[str, ...] = FINAL, timeout_s: float = 300.0
) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def custom_ids(lines: list[dict[str, Any]]) -> list[str]:
    return sorted(str(line["custom_id"]) for line in lines)


def logged_rows(database_url: str, batch_id: str) -> list[dict[str, Any]]:
    """The interaction rows of a batch's lines (request ids '<batch>.<line>.<suffix>')."""
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT request_id, batch_id, cache, status_code, endpoint FROM interactions "
                    "WHERE batch_id = :batch"
                ),
                {"batch": batch_id},
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()
