"""The interaction writer against the machine's MariaDB (a database of its own per module).

Rows match records 1:1, texts are stored verbatim, poison rows are isolated, replays are
idempotent, the queue spills to the spool, shutdown spools what MySQL cannot take, and the
ops CLI works end to end (migrate as a subprocess from another directory).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_log_engine, create_sync_engine
from gateway.db.migrate import current_revision, head_revision, upgrade
from gateway.interactions import (
    LoggedImage,
)
from gateway.interactions.cli import main as cli_main
from gateway.interactions.records import RowPolicy, to_row
from gateway.interactions.spool import Spool
from localstack.processes import free_port
from tests.support.interactions import (
    BAG,
    LABEL,
    NOW_MS,
    by_prefix,
    fetch,
    make,
    metric,
    normalised,
    running,
    settings_for,
)
from tests.support.mariadb import shared_database, shared_server_error


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    error = shared_server_error()
    if error is not None:
        pytest.fail(error)
    with shared_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
def sync_engine(db_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_log_engine(db_url, prepared_statements=True)
    yield engine
    await engine.dispose()


@pytest.fixture
def prefix() -> str:
    return uuid.uuid4().hex[:8]


async def test_rows_match_records_one_to_one(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    records = [
        make(f"{prefix}-hit", cache="hit", answer="Yes, full-grain leather.", images=(BAG,),
             api_key_id="key_live_01", client_ip="203.0.113.77", user_agent="okhttp/4.12",
             prompt_tokens=310, completion_tokens=7, worker_id="http://127.0.0.1:8100",
             moderation="pass", profile="cpu-tiny"),
        make(f"{prefix}-miss", cache="miss", stream=True, ttft_ms=85.5, answer="It looks real.",
             images=(BAG, LABEL), shape="chat", prompt_tokens=610, completion_tokens=12,
             client_ip="2001:db8:abcd:12::1"),
        make(f"{prefix}-coalesced", cache="coalesced", endpoint="/v1/vqa", shape="vqa",
             answer="A gift, yes.", images=(LABEL,)),
        make(f"{prefix}-error", cache="miss", status_code=502, error_type="upstream_error",
             error_code="worker_unavailable", answer=None, worker_id="http://127.0.0.1:8101"),
        make(f"{prefix}-rejected", status_code=400, error_type="invalid_request_error",
             error_code="image_too_large", model=None, prompt=None, cache=None,
             finished_at_ms=NOW_MS + 2),
        make(f"{prefix}-limited", status_code=429, error_type="rate_limit_error",
             error_code="rate_limited", api_key_id="key_live_02", cache=None,
             moderation=None, latency_ms=0.4),
        make(f"{prefix}-blocked", status_code=400, error_type="content_policy",
             error_code="moderation_blocked", moderation="blocked:prompt", cache=None),
    ]  # fmt: skip
    settings = settings_for(db_url, tmp_path / "spool.jsonl")
    async with running(engine, settings) as (writer, metrics):
        for item in records:
            writer.submit(item)
        await writer.flush()
        assert metric(metrics, "written", "direct") == len(records)
    rows = by_prefix(sync_engine, prefix)
    assert sorted(rows) == sorted(r.request_id for r in records)
    policy = RowPolicy(
        prompt_max_chars=settings.prompt_max_chars,
        answer_max_chars=settings.answer_max_chars,
        client_ip=settings.client_ip,
    )
    for item in records:
        assert normalised(rows[item.request_id]) == to_row(item, policy), item.request_id
    hit = rows[f"{prefix}-hit"]
    assert hit["client_ip"] == "203.0.113.0"
    assert hit["latency_ms"] == 120.0
    assert rows[f"{prefix}-miss"]["client_ip"] == "2001:db8:abcd::"
    assert rows[f"{prefix}-rejected"]["answer"] is None
    assert rows[f"{prefix}-limited"]["latency_ms"] == 0.4
    with sync_engine.connect() as conn:
        images = conn.exec_driver_sql(
            "SELECT request_id, position, digest FROM interaction_images "
            "WHERE request_id LIKE %s ORDER BY request_id, position",
            (prefix + "%",),
        ).all()
    assert [(r[0].decode(), r[1], r[2]) for r in images] == [
        (f"{prefix}-coalesced", 0, LABEL.sha256),
        (f"{prefix}-hit", 0, BAG.sha256),
        (f"{prefix}-miss", 0, BAG.sha256),
        (f"{prefix}-miss", 1, LABEL.sha256),
    ]


NASTY = [
    "Robert'); DROP TABLE interactions;--",
    "\\' OR 1=1 -- \\",
    '" ; SELECT SLEEP(10); "',
    "%s %(name)s %% {0} ? :param $1",
    "`backticks` and 'quotes' and \"doubles\"",
    "emoji 👜🇫🇷👨‍👩‍👧 and 中文，全角？ and 𝕏𐍈",
    "NUL\x00inside\x00",
    "CR\rLF\nCRLF\r\n",
    "\t tab and trailing spaces   ",
    "\x1a ctrl-Z \x08 backspace \x7f del",
    "combining e\u0301 and \ufeff BOM and \uffff",
    "",
]


async def test_metacharacters_emoji_nul_and_crlf_are_stored_verbatim(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    records = [
        make(f"{prefix}-{i}", prompt=text, answer=text[::-1], user_agent=text, model=text[:128],
             error_type=text[:64], api_key_id=text[:64], worker_id=text, moderation=text[:64])
        for i, text in enumerate(NASTY)
    ]  # fmt: skip
    odd_id = f"{prefix}-id-'\"\\%s\x00😀 "
    records.append(make(odd_id, prompt=NASTY[0]))
    async with running(engine, settings_for(db_url, tmp_path / "s.jsonl")) as (writer, metrics):
        for item in records:
            writer.submit(item)
        await writer.flush()
        assert metric(metrics, "poisoned") == 0
    rows = by_prefix(sync_engine, prefix)
    assert len(rows) == len(records)
    for i, text in enumerate(NASTY):
        row = rows[f"{prefix}-{i}"]
        assert row["prompt"] == text
        assert row["answer"] == text[::-1]
        assert row["user_agent"] == text
        assert row["model"] == text[:128]
        assert row["worker_id"] == text
        assert row["poisoned"] == 0
    assert rows[odd_id]["prompt"] == NASTY[0]
    # Exact-match lookups work with the odd id too (bound parameter, binary column).
    assert list(fetch(sync_engine, "request_id = %s", [odd_id])) == [odd_id]
    with sync_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM interactions").scalar_one() > 0


async def test_poison_rows_are_isolated_and_flagged_without_losing_their_batch(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    poison: dict[int, dict[str, Any]] = {
        7: {"prompt": "lone \ud800 surrogate"},
        19: {"status_code": 99_999},  # SMALLINT UNSIGNED
        23: {"model": "m" * 300},  # VARCHAR(128)
        31: {"completion_tokens": -1},  # INT UNSIGNED
        40: {"images": (LoggedImage("\udfff" * 3, 1, 1, 1, "png"),)},
        45: {"prompt": 12_345},  # not even a string: the record cannot become a row
    }
    records = [make(f"{prefix}-{i:02d}", **poison.get(i, {})) for i in range(50)]
    settings = settings_for(db_url, tmp_path / "spool.jsonl", batch_size=50, flush_interval_s=1)
    async with running(engine, settings) as (writer, metrics):
        for item in records:
            writer.submit(item)
        await writer.flush()
        assert metric(metrics, "poisoned") == len(poison)
        assert metric(metrics, "written", "direct") == 50
        assert metric(metrics, "dropped", "rejected") == 0
        assert writer.spool_bytes == 0
    rows = by_prefix(sync_engine, prefix)
    assert len(rows) == 50
    flagged = {int(k.rsplit("-", 1)[1]) for k, r in rows.items() if r["poisoned"]}
    assert flagged == set(poison)
    assert rows[f"{prefix}-07"]["prompt"] == "lone \\ud800 surrogate"
    assert "surrogates not allowed" in rows[f"{prefix}-07"]["poison_error"]
    assert rows[f"{prefix}-19"]["status_code"] == 65_535
    assert "1264" in rows[f"{prefix}-19"]["poison_error"]
    assert rows[f"{prefix}-23"]["model"] == "m" * 128
    assert rows[f"{prefix}-31"]["completion_tokens"] is None
    assert json.loads(rows[f"{prefix}-40"]["images"])[0]["digest"] == "\\udfff" * 3
    assert rows[f"{prefix}-45"]["poison_error"].startswith("invalid record: TypeError")
    assert rows[f"{prefix}-45"]["prompt"] is None
    for i in set(range(50)) - set(poison):
        row = rows[f"{prefix}-{i:02d}"]
        assert row["prompt"] == "is this bag real leather?"
        assert row["poison_error"] is None


async def test_records_arriving_during_an_insert_wait_for_a_full_batch(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    # A steady trickle: records keep arriving while each batch is written. Each batch
    # still waits for batch_size rows (the interval is long), not only for what arrived
    # during the last insert.
    settings = settings_for(db_url, tmp_path / "spool.jsonl", batch_size=20, flush_interval_s=30)
    async with running(engine, settings) as (writer, metrics):
        for i in range(100):
            writer.submit(make(f"{prefix}-{i:03d}"))
            await asyncio.sleep(0.002)
        await writer.flush()
        registry = metrics.registry
        batches = registry.get_sample_value("gateway_interactions_batch_rows_count")
        rows = registry.get_sample_value("gateway_interactions_batch_rows_sum")
    assert (batches, rows) == (5, 100)
    assert len(by_prefix(sync_engine, prefix)) == 100


async def test_replays_are_idempotent_on_request_id(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    first = make(f"{prefix}-once", answer="first")
    again = make(f"{prefix}-once", answer="second copy, ignored")
    settings = settings_for(db_url, tmp_path / "spool.jsonl")
    async with running(engine, settings) as (writer, _):
        writer.submit(first)
        await writer.flush()
        writer.submit(again)
        await writer.flush()
    # A spool holding rows that are already in MySQL (a crash after the insert, before the
    # spool was truncated) replays to the same rows.
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    spool.open()
    spool.append(
        [to_row(first, RowPolicy()), to_row(make(f"{prefix}-new"), RowPolicy())], sync=True
    )
    spool.close()
    async with running(engine, settings) as (writer, metrics):
        assert await writer.drain_spool()
        assert metric(metrics, "written", "replay") == 2
    rows = by_prefix(sync_engine, prefix)
    assert sorted(rows) == [f"{prefix}-new", f"{prefix}-once"]
    assert rows[f"{prefix}-once"]["answer"] == "first"


async def test_a_full_queue_spills_to_the_spool_and_is_replayed(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    settings = settings_for(
        db_url, tmp_path / "spool.jsonl", queue_size=10, batch_size=5, flush_interval_s=5
    )
    acked: list[str] = []
    async with running(engine, settings, acked.extend) as (writer, metrics):
        for i in range(100):  # no await in between: the writer task cannot run
            writer.submit(make(f"{prefix}-{i}"))
        assert writer.queue_depth == 10
        assert metric(metrics, "spooled", "queue_full") == 90
        await writer.flush()
        # durable = written to MySQL (10) or fsynced to the spool (90), each reported once
        assert sorted(acked) == sorted(f"{prefix}-{i}" for i in range(100))
        assert await writer.drain_spool()
        assert metric(metrics, "written", "replay") == 90
        assert metric(metrics, "written", "direct") == 10
    assert len(by_prefix(sync_engine, prefix)) == 100


async def test_shutdown_spools_what_mysql_cannot_take_and_the_next_start_replays_it(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    spool_path = tmp_path / "spool.jsonl"
    down_url = f"mysql://root@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    down_engine = create_log_engine(down_url, connect_timeout_s=1)
    try:
        down = settings_for(down_url, spool_path, flush_interval_s=30, close_timeout_s=5)
        async with running(down_engine, down) as (writer, metrics):
            for i in range(50):
                writer.submit(make(f"{prefix}-{i}"))
        # close() returned: everything is in the fsynced spool.
        assert (
            metric(metrics, "spooled", "shutdown") + metric(metrics, "spooled", "db_unavailable")
            == 50
        )
        lines = spool_path.read_text().splitlines()
        assert len(lines) == 50
    finally:
        await down_engine.dispose()
    async with running(engine, settings_for(db_url, spool_path)) as (writer, metrics):
        assert await writer.drain_spool()
    assert len(by_prefix(sync_engine, prefix)) == 50
    assert not Spool(spool_path, 1).sealed_files()


async def test_spool_limit_drops_and_counts(tmp_path: Path) -> None:
    down_url = f"mysql://root@127.0.0.1:{free_port()}/nowhere"
    down_engine = create_log_engine(down_url, connect_timeout_s=1)
    try:
        settings = settings_for(
            down_url, tmp_path / "spool.jsonl", spool_max_bytes=20_000, batch_size=10
        )
        async with running(down_engine, settings) as (writer, metrics):
            for i in range(100):
                writer.submit(make(f"r{i}"))
                if i % 10 == 9:
                    await writer.flush()
            assert not writer.db_up
            dropped = metric(metrics, "dropped", "spool_full")
            spooled = metric(metrics, "spooled", "db_unavailable")
            assert dropped > 0
            assert dropped + spooled == 100
            assert writer.spool_bytes <= 20_000
            gauge = metrics.registry.get_sample_value("gateway_interactions_spool_bytes")
            assert gauge == writer.spool_bytes
    finally:
        await down_engine.dispose()


async def test_disabled_log_does_nothing(tmp_path: Path) -> None:
    settings = settings_for("mysql://x@127.0.0.1:1/x", tmp_path / "s.jsonl", enabled=False)
    async with running(None, settings) as (writer, metrics):
        writer.submit(make("r1"))
        await writer.flush()
        assert metric(metrics, "submitted") == 0
    assert not (tmp_path / "s.jsonl").exists()


def run_cli(*args: str) -> str:
    out = io.StringIO()
    assert cli_main(list(args), out=out) == 0, out.getvalue()
    return out.getvalue()


async def test_ops_cli_end_to_end(tmp_path: Path) -> None:
    with shared_database("vlm_test_cli") as url:
        # migrate as make up runs it: a subprocess, from another working directory.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.interactions", "--url", url, "migrate"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"revision {head_revision()}" in done.stdout
        assert current_revision(url) == head_revision()
        hour = 3_600_000
        old = NOW_MS - 40 * 24 * hour
        records = [
            make("old1", received_at_ms=old, finished_at_ms=old + 5, images=(BAG,)),
            make("old2", received_at_ms=old + 1, finished_at_ms=old + 6),
            make("old3", received_at_ms=old + 2, finished_at_ms=old + 7),
            make("q1", cache="hit", images=(BAG,), latency_ms=10.0),
            make("q2", cache="hit", images=(BAG,), latency_ms=20.0),
            make("q3", cache="miss", images=(BAG, LABEL), latency_ms=300.0),
            make("q4", cache="miss", prompt="what brand is this?", images=(LABEL,),
                 latency_ms=400.0, status_code=502),
            make("q5", status_code=400, prompt="line one\nline two", latency_ms=1.0),
        ]  # fmt: skip
        engine = create_log_engine(url)
        try:
            async with running(engine, settings_for(url, tmp_path / "s.jsonl")) as (writer, _):
                for item in records:
                    writer.submit(item)
                await writer.flush()
        finally:
            await engine.dispose()

        tail = run_cli("--url", url, "tail", "-n", "3")
        assert len(tail.splitlines()) == 3
        assert [line.split()[2] for line in tail.splitlines()] == ["q3", "q4", "q5"]
        assert "line one\\nline two" in tail  # one line per row
        tail_json = [
            json.loads(line) for line in run_cli("--url", url, "tail", "--json").splitlines()
        ]
        assert {r["request_id"] for r in tail_json} == {r.request_id for r in records}

        stats = run_cli("--url", url, "stats", "--hours", "2").splitlines()
        assert stats[0].split()[:3] == ["hour", "(UTC)", "requests"]
        current = stats[-1].split()  # day, hour, then the figures
        assert current[2] == "5"  # requests this hour
        assert current[3] == "50.0%"  # 2 hits of 4 with a cache outcome
        assert current[5:7] == ["20.0", "400.0"]  # p50, p99 (nearest rank)
        assert current[7:9] == ["20.0%", "20.0%"]  # 5xx, 4xx

        images = run_cli("--url", url, "top", "images", "--hours", "2").splitlines()
        assert images[1].split()[0] == "3"
        assert images[1].endswith(BAG.sha256)
        questions = run_cli("--url", url, "top", "questions").splitlines()
        assert questions[1].split()[0] == "3"
        assert questions[1].endswith("is this bag real leather?")

        assert "would delete 3 rows" in run_cli(
            "--url", url, "retention", "--days", "30", "--dry-run"
        )
        assert "deleted 3 rows" in run_cli(
            "--url", url, "retention", "--days", "30", "--batch-size", "2"
        )
        sync = create_sync_engine(url)
        try:
            assert sorted(fetch(sync, "1")) == ["q1", "q2", "q3", "q4", "q5"]
            with sync.connect() as conn:
                assert (
                    conn.exec_driver_sql(
                        "SELECT COUNT(*) FROM interaction_images WHERE request_id = %s", ("old1",)
                    ).scalar_one()
                    == 0
                )

            # replay: a spool left behind by a gateway that could not reach MySQL.
            spool_path = tmp_path / "left" / "spool.jsonl"
            spool = Spool(spool_path, 10_000_000)
            spool.open()
            spool.append([to_row(make(f"s{i}"), RowPolicy()) for i in range(30)], sync=True)
            spool.close()
            assert "30 lines" in run_cli("--url", url, "--spool", str(spool_path), "spool")
            # (in a thread: the command runs its own event loop, as it does from a shell)
            replay = await asyncio.to_thread(
                run_cli, "--url", url, "--spool", str(spool_path), "replay"
            )
            assert "replayed 30 rows" in replay
            assert len(fetch(sync, "request_id LIKE %s", ["s%"])) == 30
            assert spool_path.stat().st_size == 0
        finally:
            sync.dispose()


async def test_close_replays_the_spool_while_mysql_answers(
    engine: AsyncEngine, sync_engine: Engine, db_url: str, tmp_path: Path, prefix: str
) -> None:
    """A pod whose spool is an emptyDir takes what is left in it: close() replays the spool
    (within its time-out) when MySQL answers, instead of leaving it to a next start."""
    settings = settings_for(db_url, tmp_path / "spool.jsonl", batch_size=50)
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    spool.open()
    spool.append([to_row(make(f"{prefix}-{i}"), RowPolicy()) for i in range(120)], sync=True)
    assert spool.rows == 120
    spool.close()
    async with running(engine, settings) as (writer, metrics):
        pass  # closed at once: no idle moment in which the writer would replay anyway
    assert len(by_prefix(sync_engine, prefix)) == 120
    assert metric(metrics, "written", "replay") == 120
    assert writer.spool_bytes == 0
    assert metrics.registry.get_sample_value("gateway_interactions_spool_rows") == 0
