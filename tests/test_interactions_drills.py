"""Outage drills on a private MariaDB (own port and data directory, started by the tests).

* MariaDB stopped for 30 s while records keep arriving, then restarted: every submitted
  record has exactly one row, none is missing, none is duplicated.
* MariaDB frozen (SIGSTOP: "slow") past the write time-out: the same, though the timed-out
  inserts may land after the thaw and be replayed as well.
* A writer process SIGKILLed while MariaDB is down (itself killed with SIGKILL mid-write),
  then MariaDB and the writer restarted: the spool is replayed; every record the killed
  process had acknowledged (reported durable) has exactly one row, and nothing is duplicated.

VLM_DRILL_OUTAGE_S shortens the 30 s stop for quick local iterations; the default is the
issue's 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import create_database_if_missing, create_log_engine, create_sync_engine
from gateway.db.migrate import current_revision, head_revision, upgrade
from gateway.interactions import (
    InteractionLogMetrics,
    InteractionLogSettings,
    InteractionRecord,
    InteractionWriter,
    LoggedImage,
)
from tests.support.mariadb import PrivateMariaDB, running_private_mariadb

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTAGE_S = float(os.environ.get("VLM_DRILL_OUTAGE_S", "30"))
IMAGE = LoggedImage("d" * 64, 98_765, 800, 600, "webp")


def drill_settings(url: str, spool: Path, **overrides: Any) -> InteractionLogSettings:
    values: dict[str, Any] = {
        "database_url": SecretStr(url),
        "spool_path": spool,
        "batch_size": 100,
        "flush_interval_s": 0.1,
        "write_timeout_s": 1.5,
        "connect_timeout_s": 1.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        "close_timeout_s": 10.0,
    }
    values.update(overrides)
    return InteractionLogSettings(**values)


def make(request_id: str) -> InteractionRecord:
    now = time.time_ns() // 1_000_000
    return InteractionRecord(
        request_id=request_id, received_at_ms=now, finished_at_ms=now + 40,
        endpoint="/v1/chat/completions", shape="chat", status_code=200, cache="miss",
        model="qwen3-vl-tiny", prompt=f"what is in picture {request_id}? 👜", answer="a bag",
        images=(IMAGE,), prompt_tokens=300, completion_tokens=3,
    )  # fmt: skip


def counts(url: str, prefix: str) -> dict[str, int]:
    """request_id -> number of rows (the unique key makes > 1 impossible; we check anyway)."""
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT request_id, COUNT(*) FROM interactions WHERE request_id LIKE %s "
                "GROUP BY request_id",
                (prefix + "%",),
            ).all()
            images = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM interaction_images WHERE request_id LIKE %s",
                (prefix + "%",),
            ).scalar_one()
    finally:
        engine.dispose()
    result = {r[0].decode(): int(r[1]) for r in rows}
    assert images == len(result)  # one image per record, stored with its row
    return result


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def metric(metrics: InteractionLogMetrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None
    return value


@pytest.fixture(scope="module")
def private_db() -> Iterator[PrivateMariaDB]:
    with running_private_mariadb() as db:
        yield db


@pytest.fixture(scope="module")
def drill_url(private_db: PrivateMariaDB) -> str:
    url = private_db.create_database("vlm_drill")
    upgrade(url)
    return url


@pytest.fixture
async def engine(drill_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_log_engine(drill_url, connect_timeout_s=1.0, prepared_statements=True)
    yield engine
    await engine.dispose()


class Load:
    """Submits records at about ``rate`` per second until stopped."""

    def __init__(self, writer: InteractionWriter, prefix: str, rate: int = 200) -> None:
        self.writer, self.prefix, self.rate = writer, prefix, rate
        self.submitted: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        tick = 0.05
        while not self._stop.is_set():
            for _ in range(max(1, int(self.rate * tick))):
                request_id = f"{self.prefix}-{len(self.submitted)}"
                self.writer.submit(make(request_id))
                self.submitted.append(request_id)
            await asyncio.sleep(tick)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def test_mariadb_stopped_30s_under_load_loses_and_duplicates_nothing(
    private_db: PrivateMariaDB, drill_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    metrics = InteractionLogMetrics(CollectorRegistry())
    acked: set[str] = set()
    settings = drill_settings(drill_url, tmp_path / "spool.jsonl")
    writer = InteractionWriter(engine, settings, metrics, on_durable=acked.update)
    await writer.start()
    load = Load(writer, "outage")
    load.start()
    try:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(private_db.stop)  # SIGTERM: a clean stop, as systemd does
        stopped_at = time.monotonic()
        await eventually(lambda: not writer.db_up, 10, "the writer notices the outage")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        spooled = metric(
            metrics, "gateway_interactions_spooled_total", {"reason": "db_unavailable"}
        )
        assert spooled > 0
        assert writer.spool_bytes > 0
        assert metrics.registry.get_sample_value("gateway_interactions_db_up") == 0
        await asyncio.to_thread(private_db.start)
        await asyncio.sleep(2.0)
    finally:
        await load.stop()
    await eventually(lambda: writer.db_up, 10, "the writer sees MySQL back")
    await writer.flush()
    await eventually(lambda: writer.spool_bytes == 0, 60, "the spool is replayed")
    await writer.close()

    rows = counts(drill_url, "outage-")
    assert len(load.submitted) > 200 * OUTAGE_S * 0.8
    assert set(rows) == set(load.submitted), "every submitted record has a row"
    assert set(rows.values()) == {1}, "no duplicates"
    assert acked == set(load.submitted)
    replayed = metric(metrics, "gateway_interactions_written_total", {"path": "replay"})
    assert replayed >= spooled
    assert metric(metrics, "gateway_interactions_dropped_total", {"reason": "spool_full"}) == 0
    assert not writer.spool.sealed_files()


async def test_mariadb_frozen_past_the_write_timeout_loses_and_duplicates_nothing(
    private_db: PrivateMariaDB, drill_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    metrics = InteractionLogMetrics(CollectorRegistry())
    settings = drill_settings(drill_url, tmp_path / "spool.jsonl", write_timeout_s=0.5)
    writer = InteractionWriter(engine, settings, metrics)
    await writer.start()
    load = Load(writer, "frozen")
    load.start()
    try:
        await asyncio.sleep(1.0)
        private_db.freeze()
        try:
            await eventually(lambda: not writer.db_up, 10, "the writer gives up on slow MySQL")
            await asyncio.sleep(2.0)
        finally:
            private_db.thaw()
        await asyncio.sleep(1.0)
    finally:
        await load.stop()
    await eventually(lambda: writer.db_up, 15, "the writer sees MySQL back")
    await writer.flush()
    await eventually(lambda: writer.spool_bytes == 0, 60, "the spool is replayed")
    await writer.close()
    rows = counts(drill_url, "frozen-")
    assert set(rows) == set(load.submitted)
    assert set(rows.values()) == {1}
    assert metric(metrics, "gateway_interactions_spooled_total", {"reason": "db_unavailable"}) > 0


# --- the SIGKILL drill: the writer runs in a child process --------------------------------
async def _child(args: argparse.Namespace) -> None:
    engine = create_log_engine(args.url, connect_timeout_s=1.0)
    out = sys.stdout

    def ack(ids: Sequence[str]) -> None:
        out.write("".join(f"ack {i}\n" for i in ids))
        out.flush()

    settings = drill_settings(args.url, Path(args.spool))
    writer = InteractionWriter(
        engine, settings, InteractionLogMetrics(CollectorRegistry()), on_durable=ack
    )
    await writer.start()
    print("ready", flush=True)
    count = 0
    if args.mode == "load":  # until killed
        while True:
            for _ in range(10):
                writer.submit(make(f"{args.prefix}-{count}"))
                count += 1
            await asyncio.sleep(0.05)
    # restart: replay what the killed process left, take a little new traffic, stop cleanly
    await eventually(lambda: writer.spool_bytes == 0, 60, "the restarted writer replays")
    for count in range(50):
        writer.submit(make(f"{args.prefix}-{count}"))
    await writer.close()
    await engine.dispose()
    print("done", flush=True)


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.acked: list[str] = []
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line.startswith("ack "):
                self.acked.append(line[4:])

    @classmethod
    async def spawn(cls, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.test_interactions_drills", *args,
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        child = cls(proc)
        await eventually(lambda: "ready" in child.lines, 60, "the child writer starts")
        return child

    async def finish(self) -> int:
        code = await self.proc.wait()
        await self.reader
        return code


async def test_writer_sigkilled_during_an_outage_replays_its_spool_on_restart(
    private_db: PrivateMariaDB, drill_url: str, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool.jsonl")
    common = ["--url", drill_url, "--spool", spool]
    first = await Child.spawn(*common, "--prefix", "killed", "--mode", "load")
    try:
        await eventually(lambda: len(first.acked) >= 200, 20, "acks while MySQL is up")
        private_db.kill()  # the database crashes, mid-write most likely
        acked_before_outage = len(first.acked)
        await eventually(
            lambda: len(first.acked) >= acked_before_outage + 300, 20, "acks from the spool"
        )
        await asyncio.sleep(0.3)
    finally:
        first.proc.kill()  # SIGKILL: no close(), no flush; the queue in memory is lost
    assert await first.finish() == -9
    await asyncio.to_thread(private_db.start)

    second = await Child.spawn(*common, "--prefix", "restarted", "--mode", "restart")
    assert await second.finish() == 0
    assert "done" in second.lines

    killed = counts(drill_url, "killed-")
    restarted = counts(drill_url, "restarted-")
    assert set(first.acked) <= set(killed), "every acknowledged record has a row"
    assert set(killed.values()) == {1}, "no duplicates"
    submitted_ids = {f"killed-{i}" for i in range(len(killed) + 1000)}
    assert set(killed) <= submitted_ids
    assert set(restarted) == set(second.acked) == {f"restarted-{i}" for i in range(50)}
    assert set(restarted.values()) == {1}
    assert await asyncio.to_thread(os.path.getsize, spool) == 0


def test_create_database_with_its_own_user(private_db: PrivateMariaDB) -> None:
    url = private_db.url("vlm_owned").replace("root@", "vlm_app:s3cret%40x@")
    assert create_database_if_missing(url, admin_url=private_db.url(""))
    assert not create_database_if_missing(url, admin_url=private_db.url(""))
    upgrade(url)  # as the new user
    assert current_revision(url) == head_revision()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--mode", choices=("load", "restart"), required=True)
    asyncio.run(_child(parser.parse_args()))
