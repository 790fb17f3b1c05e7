"""The Batch API's objects as OpenAI shapes them (the official SDK parses these), built
from table rows; and the ids and clock they share."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

# Batch statuses, as OpenAI names them.
VALIDATING: Final = "validating"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
EXPIRED: Final = "expired"
CANCELLING: Final = "cancelling"
CANCELLED: Final = "cancelled"
# Still the runner's: not yet in a final status.
ACTIVE: Final = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)

# Endpoints a batch may target: every line's url must be the batch's.
ENDPOINTS: Final = ("/v1/chat/completions", "/v1/match")
COMPLETION_WINDOWS: Final = {"24h": 24 * 3600 * 1000}

_TIMES: Final = (
    "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled",
)  # fmt: skip


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else int(ms) // 1000


def file_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": int(row["bytes"]),
        "created_at": _seconds(row["created_ms"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(row: Mapping[str, Any]) -> dict[str, Any]:
    errors = row["errors"]
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": _seconds(row["created_ms"]),
        "expires_at": _seconds(row["expires_ms"]),
        **{f"{name}_at": _seconds(row[f"{name}_ms"]) for name in _TIMES},
        "request_counts": {
            "total": int(row["total"]),
            "completed": int(row["completed"]),
            "failed": int(row["failed"]),
        },
        "metadata": row["metadata"] or None,
    }
