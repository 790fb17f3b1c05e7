"""Schemathesis against the gateway's own OpenAPI spec: at least 1000 generated requests,
no 5xx, every answer as the spec declares it (status, content type, headers, body schema),
and every inference request logged to MariaDB with no row dropped.

The gateway is the real process (``python -m gateway``) with real Redis (a namespace of
its own) and the real interaction log (this session's database); its worker is the echo
double (localstack/echo_worker.py) so a thousand requests take seconds. The real engine
is behind the same gateway in the end-to-end tests (test_pipeline_engine, test_stack_nginx).

Stateful testing is left out (``--phases``): schemathesis infers links from the Batch API
(a file, then a batch that reads it) and follows them for thousands of cases more; those
flows are tested end to end in tests/test_batch_engine.py.

A second, shorter run goes through API keys and rate limits: a key made with the real CLI,
with a small requests-per-minute limit so 429s come too, and schemathesis's
``ignored_auth`` check, which sends each request again without the key and expects 401.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localstack import echo_worker as echo_worker_process
from localstack.processes import LocalProcess, start_gateway
from tests.support.auth import create_key
from tests.support.worker import LOG_DIR
from worker.profiles import REPO_ROOT

MIN_CASES = 1000
# Per operation, fuzzing phase; the coverage phase adds its own cases on top.
MAX_EXAMPLES = 400
SEED = int(os.environ.get("VLM_FUZZ_SEED", "20261124"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # A body the spec forbids must get a 4xx: the spec is no looser than the gateway.
    "negative_data_rejection",
    # A method a path does not have gets 405 with an Allow header.
    "unsupported_method",
)
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
KEYED_MAX_EXAMPLES = 40
KEYED_RPM = 60


@pytest.fixture(scope="module")
def echo_worker() -> Iterator[LocalProcess]:
    worker = echo_worker_process.start(LOG_DIR)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def gateway(echo_worker: LocalProcess, gateway_process_env: dict[str, str]) -> Iterator[str]:
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"fuzz-{uuid.uuid4().hex[:10]}",
        "GATEWAY_AUTH_ENABLED": "false",
        "GATEWAY_MAX_BODY_BYTES": str(256 * 1024),
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
    }
    process = start_gateway([echo_worker.url], LOG_DIR, env=env)
    try:
        yield process.url
    finally:
        process.stop()
        assert process.process.returncode == 0, process.log_tail()


@pytest.fixture(scope="module")
def keyed_gateway(
    echo_worker: LocalProcess, gateway_process_env: dict[str, str], log_database_url: str
) -> Iterator[tuple[str, str]]:
    """A gateway that requires keys, and one key with a small requests-per-minute limit."""
    key = create_key(log_database_url, "--rpm", str(KEYED_RPM), name="fuzz")
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"fuzz-{uuid.uuid4().hex[:10]}",
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_AUTH_DATABASE_URL": log_database_url,
        "GATEWAY_MAX_BODY_BYTES": str(256 * 1024),
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
    }
    process = start_gateway([echo_worker.url], LOG_DIR, env=env)
    try:
        yield process.url, key
    finally:
        process.stop()
        assert process.process.returncode == 0, process.log_tail()


def _log_counters(base_url: str) -> dict[str, float]:
    """The interaction writer's counters, summed over their labels."""
    totals: dict[str, float] = {}
    text = httpx.get(base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name.startswith("gateway_interactions_"):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _run_schemathesis(
    base_url: str, report: Path, max_examples: int = MAX_EXAMPLES, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS), "run", base_url + "/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(max_examples),
        "--seed", str(SEED),
        "--workers", "1",
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "30",
        "--report", "json",
        "--report-json-path", str(report),
        *extra,
    ]  # fmt: skip
    # Run outside the checkout: schemathesis keeps a cache folder in its working directory.
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks",
        "PYTHONPATH": str(REPO_ROOT),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        command, cwd=report.parent, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def _fuzz(
    base_url: str, tmp_path: Path, max_examples: int = MAX_EXAMPLES, extra: Sequence[str] = ()
) -> tuple[dict[str, Any], str]:
    """One schemathesis run that found nothing: its JSON report and its output."""
    report_path = tmp_path / "schemathesis.json"
    run = _run_schemathesis(base_url, report_path, max_examples, extra)
    # The failures section (each with a curl line to reproduce it), else the summary.
    failures_at = run.stdout.find("FAILURES")
    start = failures_at if failures_at >= 0 else max(0, len(run.stdout) - 6000)
    output = run.stdout[start:][:12000] + run.stderr[-2000:]
    report: dict[str, Any] = json.loads(report_path.read_text())
    cases = report["test_cases"]
    print(f"schemathesis seed {SEED}: {cases['generated']} cases generated")
    assert run.returncode == 0, output
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert cases["with_failures"] == 0
    assert cases["errored"] == 0
    return report, output


def test_fuzzing_the_spec_finds_no_5xx_no_answer_outside_it_and_loses_no_row(
    gateway: str, tmp_path: Path
) -> None:
    report, output = _fuzz(gateway, tmp_path)
    assert report["test_cases"]["generated"] >= MIN_CASES, output
    assert report["phases"]["stateful"]["status"] != "success", report["phases"]
    # The hooks make part of the bodies valid: the fuzz reached the worker, not just 400s.
    for operation in ("POST /v1/chat/completions", "POST /v1/vqa"):
        assert report["valid_rates"][operation]["fuzzing"]["accepted"] > 0, operation
    assert httpx.get(gateway + "/healthz", timeout=10).status_code == 200
    _assert_every_request_logged(gateway)


def test_fuzzing_with_a_key_enforces_auth_and_limits_within_the_spec(
    keyed_gateway: tuple[str, str], tmp_path: Path
) -> None:
    gateway, key = keyed_gateway
    report, output = _fuzz(
        gateway, tmp_path, KEYED_MAX_EXAMPLES,
        ["--header", f"Authorization: Bearer {key}", "--checks", "ignored_auth"],
    )  # fmt: skip
    assert report["test_cases"]["generated"] > KEYED_RPM, output
    # Past the key's limit, the rest were 429s, and their answers matched the spec too.
    assert _refusals(gateway, "rate_limit_exceeded") > 0
    assert _refusals(gateway, "missing_api_key") > 0, "ignored_auth sent requests without it"
    _assert_every_request_logged(gateway, minimum=KEYED_RPM)


def _refusals(gateway: str, code: str) -> float:
    """Answers the gateway gave with this error code (gateway_errors_total)."""
    text = httpx.get(gateway + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_errors_total" and sample.labels.get("code") == code
    )


def _assert_every_request_logged(gateway: str, minimum: float = MIN_CASES / 2) -> None:
    """Every inference request became a record, and every record a row (none dropped)."""
    deadline = time.monotonic() + 30
    while True:
        counters = _log_counters(gateway)
        written = counters.get("gateway_interactions_written_total", 0.0)
        if written >= counters["gateway_interactions_submitted_total"]:
            break
        assert time.monotonic() < deadline, counters
        time.sleep(0.2)
    print(f"interaction log: {counters}")
    assert counters["gateway_interactions_submitted_total"] >= minimum
    assert counters["gateway_interactions_dropped_total"] == 0
    assert counters["gateway_interactions_spooled_total"] == 0
    assert counters["gateway_interactions_poisoned_total"] == 0
