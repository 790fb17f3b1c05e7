"""How the runner sends lines: only while the workers have room, through the gateway.

``Capacity`` reads the gateway's /metrics, where every replica shows each worker's queue as
it last polled it (``gateway_worker_load{kind="waiting"}``) and its health: lines go out
only while the healthy workers' queues hold at most ``max_waiting`` requests. On the
workers, vLLM's priority scheduling serves online requests (priority 0) before batch lines
(GATEWAY_BATCH_PRIORITY) whenever both wait.

``LineSender`` posts one line to the gateway with the runner's headers (lane.py) and reads
the answer: 200 is the line's output, another 4xx its error (a bad line), and 408, 429,
5xx or no answer at all are tried again later.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import orjson

from gateway.batch.lane import BATCH_HEADER, KEY_HEADER, TOKEN_HEADER
from gateway.batch.lines import result_line
from gateway.batch.queue import Claim
from gateway.batch.settings import BatchSettings
from gateway.errors import ErrorCode, GatewayError

_RETRIED_STATUSES: Final = frozenset({408, 429})


class Capacity:
    """Whether the workers have room for batch lines now (read at most every interval)."""

    def __init__(self, client: httpx.AsyncClient, settings: BatchSettings) -> None:
        self._client = client
        self._url = settings.gateway_url + "/metrics"
        self._max_waiting = settings.max_waiting
        self._interval_s = settings.poll_interval_s
        self._checked = -float("inf")
        self._open = False

    async def open(self) -> bool:
        if time.monotonic() - self._checked < self._interval_s:
            return self._open
        self._checked = time.monotonic()
        try:
            response = await self._client.get(self._url, timeout=5.0)
            response.raise_for_status()
            self._open = room(response.text, self._max_waiting)
        except (httpx.HTTPError, ValueError):
            self._open = False  # no view of the workers: send nothing
        return self._open


# Only these two series are read, straight from the text: a gateway's /metrics is large,
# and parsing all of it every poll cost the runner more than the lines it waited for.
_SAMPLE: Final = re.compile(r"^gateway_worker_(healthy|load)\{([^}]*)\} (\S+)", re.MULTILINE)
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def room(metrics_text: str, max_waiting: int) -> bool:
    """At least one healthy worker, and their queues at most ``max_waiting`` long."""
    healthy: set[str] = set()
    waiting: dict[str, float] = {}
    for match in _SAMPLE.finditer(metrics_text):
        series, labels, value = match.group(1), dict(_LABEL.findall(match.group(2))), match.group(3)
        worker = labels.get("worker", "")
        if series == "healthy" and float(value) == 1:
            healthy.add(worker)
        elif series == "load" and labels.get("kind") == "waiting":
            waiting[worker] = float(value)
    return bool(healthy) and sum(waiting.get(w, 0.0) for w in healthy) <= max_waiting


@dataclass(frozen=True, slots=True)
class Outcome:
    state: Literal["done", "failed", "retry"]
    result: str  # the line's result, should it end here
    retry_after_s: float = 0.0


class LineSender:
    def __init__(self, client: httpx.AsyncClient, settings: BatchSettings) -> None:
        assert settings.runner_token is not None
        self._client = client
        self._base = settings.gateway_url
        self._timeout_s = settings.request_timeout_s
        self._token = settings.runner_token.get_secret_value()

    async def send(self, claim: Claim) -> Outcome:
        headers = {
            "content-type": "application/json",
            # The line's interaction rows: WHERE request_id LIKE '<batch>.<line>.%'.
            "x-request-id": f"{claim.batch_id}.{claim.line_no}",
            TOKEN_HEADER: self._token,
            BATCH_HEADER: claim.batch_id,
            KEY_HEADER: claim.owner,
        }
        try:
            response = await self._client.post(
                self._base + claim.url,
                content=claim.body.encode(),
                headers=headers,
                timeout=self._timeout_s,
            )
        except httpx.HTTPError:
            error = GatewayError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The gateway could not be reached."
            )
            return Outcome("retry", result_line(claim.custom_id, error=error))
        status = response.status_code
        body: Any
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        answer = {
            "status_code": status,
            "request_id": response.headers.get("x-request-id"),
            "body": body,
        }
        result = result_line(claim.custom_id, response=answer)
        if status == 200 and body is not None:
            return Outcome("done", result)
        if status in _RETRIED_STATUSES or status >= 500 or body is None:
            return Outcome("retry", result, _retry_after(response))
        return Outcome("failed", result)


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else 0.0
