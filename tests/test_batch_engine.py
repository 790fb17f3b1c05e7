"""The Batch API end to end: the official openai SDK against a gateway process in front of
the real engine, with API keys on, and the runner as its own process (python -m
gateway.batch). Each test starts the runner it needs: the kill drill kills it."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from deploy.dashboards.batch import BATCH_PANELS
from gateway.db.engine import create_sync_engine
from localstack.processes import LocalProcess, signal_tree, start_batch_runner, start_gateway
from tests.support.auth import create_key
from tests.support.batch import (
    RUNNER_TOKEN,
    chat_line,
    custom_ids,
    file_lines,
    jsonl,
    logged_rows,
    run_batch,
    wait_for,
)
from tests.support.images import data_uri, image_bytes
from tests.support.worker import LOG_DIR

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def keys(log_database_url: str) -> tuple[str, str]:
    return create_key(log_database_url, name="batch-a"), create_key(
        log_database_url, name="batch-b"
    )


@pytest.fixture(scope="module")
def gateway(
    worker_url: str, gateway_process_env: dict[str, str], log_database_url: str
) -> Iterator[str]:
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"batch-{uuid.uuid4().hex[:10]}",
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_AUTH_DATABASE_URL": log_database_url,
        "GATEWAY_BATCH_RUNNER_TOKEN": RUNNER_TOKEN,
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
    }
    process = start_gateway([worker_url], LOG_DIR, env=env)
    try:
        yield process.url
    finally:
        process.stop()


@contextmanager
def runner(gateway: str, database_url: str, concurrency: int = 4) -> Iterator[LocalProcess]:
    env = {
        "GATEWAY_LOG_DATABASE_URL": database_url,
        "GATEWAY_BATCH_RUNNER_TOKEN": RUNNER_TOKEN,
        "GATEWAY_BATCH_CONCURRENCY": str(concurrency),
        "GATEWAY_BATCH_LEASE_S": "2",
        "GATEWAY_BATCH_POLL_INTERVAL_S": "0.2",
        # The session's worker serves other tests' requests too: do not wait for a quiet one.
        "GATEWAY_BATCH_MAX_WAITING": "8",
    }
    process = start_batch_runner(gateway, LOG_DIR, env)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def clients(gateway: str, keys: tuple[str, str]) -> Iterator[tuple[OpenAI, OpenAI]]:
    """The official SDK as each of the two keys."""
    owner, other = (
        OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0, timeout=30) for key in keys
    )
    with owner, other:
        yield owner, other


def _line_states(database_url: str, batch_id: str) -> dict[str, int]:
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = :b GROUP BY state"),
                {"b": batch_id},
            )
            return {str(state): int(count) for state, count in rows}
    finally:
        engine.dispose()


def test_the_sdk_runs_a_batch_and_gets_every_custom_id_once_through_the_cache_and_the_log(
    gateway: str, clients: tuple[OpenAI, OpenAI], log_database_url: str
) -> None:
    client = clients[0]
    salt = uuid.uuid4().hex[:8]
    # Four questions, three times each: the repeats are answered by the cache or coalesced.
    lines = [chat_line(f"line-{i}", f"{salt} what colour is item {i % 4}?") for i in range(12)]
    batch = run_batch(client, jsonl(lines))
    assert batch.status == "validating"
    with runner(gateway, log_database_url) as process:
        done = wait_for(client, batch.id)
        _assert_dashboard_series(process.url, gateway)
    assert done.status == "completed", done
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (12, 12, 0)
    assert done.error_file_id is None
    output = file_lines(client, done.output_file_id)
    assert custom_ids(output) == sorted(line["custom_id"] for line in lines)
    answers: dict[str, set[str]] = {}
    for line in output:
        response = line["response"]
        assert line["error"] is None
        assert response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion"
        assert response["request_id"].startswith(f"{batch.id}.")
        question = int(line["custom_id"].split("-")[1]) % 4
        answers.setdefault(str(question), set()).add(
            response["body"]["choices"][0]["message"]["content"]
        )
    assert all(len(texts) == 1 for texts in answers.values()), answers  # one answer per question
    rows = _wait_rows(log_database_url, batch.id, 12)
    assert {row["batch_id"] for row in rows} == {batch.id}
    assert {row["status_code"] for row in rows} == {200}
    assert sum(row["cache"] in ("hit", "coalesced") for row in rows) >= 8, rows


def _assert_dashboard_series(runner_url: str, gateway: str) -> None:
    """Every series the batches row of the dashboard reads (deploy/dashboards/batch.py),
    from the runner's and the gateway's /metrics (the live test runs no runner)."""
    exposed = httpx.get(f"{runner_url}/metrics").text + httpx.get(f"{gateway}/metrics").text
    for panel in BATCH_PANELS:
        for query in panel.queries:
            for name in re.findall(r"gateway_batch\w+", query.expr):
                assert re.search(rf"^{name}(\{{| )", exposed, re.MULTILINE), (panel.title, name)
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(exposed)
        for s in family.samples
        if s.name.startswith("gateway_batch")
    }
    assert samples["gateway_batches_created_total"] >= 1
    assert samples["gateway_batch_line_requests_total"] >= 12


def _wait_rows(database_url: str, batch_id: str, count: int) -> list[dict[str, object]]:
    for _ in range(100):
        rows = logged_rows(database_url, batch_id)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"only {len(rows)} interaction rows for {batch_id}")


def test_bad_lines_go_to_the_error_file_in_our_error_shape_and_the_batch_finishes(
    gateway: str, clients: tuple[OpenAI, OpenAI], log_database_url: str
) -> None:
    client = clients[0]
    salt = uuid.uuid4().hex[:8]
    lines: list[dict[str, Any] | str] = [
        chat_line("good-1", f"{salt} first"),
        "this line is not JSON",
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        chat_line("good-1", f"{salt} a repeated custom_id"),
        {**chat_line("wrong-url", "x"), "url": "/v1/embeddings"},
        chat_line("streamed", "x", stream=True),
        chat_line("unknown-model", "x", model="no-such-model"),
        chat_line("policy", "where can I buy cocaine"),
        chat_line("over-the-cap", "x", max_tokens=10**6),
        chat_line("good-2", f"{salt} second"),
    ]
    batch = run_batch(client, jsonl(lines))
    with runner(gateway, log_database_url):
        done = wait_for(client, batch.id)
    assert done.status == "completed", done
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (10, 2, 8)
    assert custom_ids(file_lines(client, done.output_file_id)) == ["good-1", "good-2"]
    errors = file_lines(client, done.error_file_id)
    assert len(errors) == 8
    codes: dict[str | None, list[str]] = {}
    for line in errors:
        if line["response"] is not None:  # the gateway's own answer: our error shape
            status, body = line["response"]["status_code"], line["response"]["body"]
            assert 400 <= status < 500
            assert set(body["error"]) == {
                "message",
                "type",
                "param",
                "code",
            }
            codes.setdefault(line["custom_id"], []).append(body["error"]["code"])
        else:  # refused before it was sent: the same shape as the error object
            assert set(line["error"]) == {"message", "type", "param", "code"}
            codes.setdefault(line["custom_id"], []).append(line["error"]["code"])
    assert codes == {
        None: ["invalid_json", "invalid_request"],
        "good-1": ["invalid_request"],
        "wrong-url": ["invalid_request"],
        "streamed": ["unsupported_parameter"],
        "unknown-model": ["model_not_found"],
        "policy": ["content_policy_violation"],
        "over-the-cap": ["invalid_max_tokens"],
    }


def test_a_runner_killed_mid_batch_loses_and_repeats_no_line(
    gateway: str, clients: tuple[OpenAI, OpenAI], log_database_url: str
) -> None:
    client = clients[0]
    salt = uuid.uuid4().hex[:8]
    lines = [chat_line(f"k-{i}", f"{salt} describe item {i}", max_tokens=48) for i in range(30)]
    batch = run_batch(client, jsonl(lines))
    with runner(gateway, log_database_url, concurrency=2) as first:
        # Killed with lines done and lines in flight (claimed, leased, sent): frozen first,
        # so that what the database shows is what the kill interrupts.
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline
            signal_tree(first, signal.SIGSTOP)
            if _in_flight_after_progress(log_database_url, batch.id):
                break
            signal_tree(first, signal.SIGCONT)
            time.sleep(0.05)
        signal_tree(first, signal.SIGKILL)
        first.process.wait()
    states = _line_states(log_database_url, batch.id)
    assert states.get("running", 0) >= 1, states
    assert states.get("done", 0) < 30, states
    assert client.batches.retrieve(batch.id).status == "in_progress"
    with runner(gateway, log_database_url, concurrency=2):
        done = wait_for(client, batch.id)
    assert done.status == "completed", done
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (30, 30, 0)
    output = file_lines(client, done.output_file_id)
    assert custom_ids(output) == sorted(line["custom_id"] for line in lines)


def _in_flight_after_progress(database_url: str, batch_id: str) -> bool:
    states = _line_states(database_url, batch_id)
    return states.get("done", 0) >= 2 and states.get("running", 0) >= 1


def wait_for_progress(client: OpenAI, batch_id: str, completed: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        if counts is not None and counts.completed >= completed:
            assert counts.completed < counts.total, "the batch finished before the drill"
            return
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def test_cancel_stops_the_batch_and_keeps_what_was_done(
    gateway: str, clients: tuple[OpenAI, OpenAI], log_database_url: str
) -> None:
    client = clients[0]
    salt = uuid.uuid4().hex[:8]
    lines = [chat_line(f"c-{i}", f"{salt} describe item {i}", max_tokens=48) for i in range(30)]
    batch = run_batch(client, jsonl(lines))
    with runner(gateway, log_database_url, concurrency=1):
        wait_for_progress(client, batch.id, 1)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at is not None
        done = wait_for(client, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    counts = done.request_counts
    assert counts is not None
    assert counts.total == 30
    assert 1 <= counts.completed < 30
    output = file_lines(client, done.output_file_id)
    assert len(output) == counts.completed
    assert len(set(custom_ids(output))) == len(output)
    assert client.batches.cancel(batch.id).status == "cancelled"  # a final status stays


def test_a_key_sees_only_its_own_files_and_batches(
    gateway: str, clients: tuple[OpenAI, OpenAI]
) -> None:
    owner, other = clients
    batch = run_batch(owner, jsonl([chat_line("mine", "a question")]))
    for call in (
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.files.retrieve(batch.input_file_id),
        lambda: other.files.content(batch.input_file_id),
        lambda: other.batches.create(
            input_file_id=batch.input_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in other.batches.list(limit=100)]
    assert batch.id in [b.id for b in owner.batches.list(limit=100)]
    without_key = httpx.get(f"{gateway}/v1/batches/{batch.id}", timeout=10)
    assert without_key.status_code == 401
    owner.batches.cancel(batch.id)


def test_matching_lines_in_a_batch_score_as_online_requests_do(
    gateway: str, keys: tuple[str, str], clients: tuple[OpenAI, OpenAI], log_database_url: str
) -> None:
    client = clients[0]
    photo = data_uri(image_bytes(size=(96, 64)))
    texts = [f"{uuid.uuid4().hex[:6]} a red leather bag", "a pair of blue running shoes"]
    line = {"custom_id": "m-1", "method": "POST", "url": "/v1/match",
            "body": {"image": photo, "texts": texts}}  # fmt: skip
    batch = run_batch(client, jsonl([line]), endpoint="/v1/match")
    with runner(gateway, log_database_url):
        done = wait_for(client, batch.id)
    assert done.status == "completed", done
    (output,) = file_lines(client, done.output_file_id)
    batch_scores = [item["score"] for item in output["response"]["body"]["data"]]
    online = httpx.post(
        f"{gateway}/v1/match",
        json={"image": photo, "texts": texts},
        headers={"Authorization": f"Bearer {keys[0]}"},
        timeout=60,
    )
    assert online.status_code == 200
    assert online.headers["x-cache"] == "hit"
    assert [item["score"] for item in online.json()["data"]] == batch_scores
