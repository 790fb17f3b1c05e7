"""The runner's queue in MariaDB: claims that never share a line, results written once,
lost leases, repeated validation and finishing, attempts, expiry. A database of its own:
no runner of another test takes these batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.batch import tables
from gateway.batch.finalize import finalize, result_file_id, write_results
from gateway.batch.lines import read_lines, result_line
from gateway.batch.objects import COMPLETED, EXPIRED, FINALIZING, IN_PROGRESS, VALIDATING
from gateway.batch.queue import DONE, LINE_FAILED, BatchWork, Claim, LineQueue
from gateway.batch.store import BatchStore, read_file
from gateway.db.engine import create_log_engine
from gateway.db.migrate import upgrade
from tests.support.batch import chat_line, jsonl
from tests.support.mariadb import shared_database

CHAT = "/v1/chat/completions"
LEASE_S = 30.0


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with shared_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_log_engine(database_url, pool_size=4)
    yield engine
    # Each test's batches end with it: the next test's runners take only their own.
    async with engine.begin() as conn:
        await conn.execute(update(tables.batches).values(status="cancelled"))
    await engine.dispose()


async def _started(engine: AsyncEngine, lines: int, queue: LineQueue) -> BatchWork:
    """A batch of ``lines`` good lines, validated by ``queue`` (now in progress)."""
    store = BatchStore(engine)
    data = jsonl([chat_line(f"id-{i}", f"question {i}") for i in range(lines)])
    source = await store.create_file("owner", "batch", "in.jsonl", data)
    batch = await store.create_batch("owner", source["id"], CHAT, "24h", None)
    work = await queue.take_batch(LEASE_S)
    assert work is not None
    assert (work.id, work.status) == (batch["id"], VALIDATING)
    await queue.add_lines(work, read_lines(data, CHAT))
    return work


async def _batch(engine: AsyncEngine, batch_id: str) -> dict[str, object]:
    async with engine.connect() as conn:
        row = (
            (await conn.execute(select(tables.batches).where(tables.batches.c.id == batch_id)))
            .mappings()
            .one()
        )
    return dict(row)


def _answer(claim: Claim) -> str:
    return result_line(claim.custom_id, response={"status_code": 200, "body": {}})


async def test_runners_claiming_at_once_never_share_a_line(engine: AsyncEngine) -> None:
    runners = [LineQueue(engine, f"runner-{n}") for n in range(3)]
    work = await _started(engine, 120, runners[0])
    taken: list[list[Claim]] = [[] for _ in runners]

    async def drain(n: int) -> None:
        while claims := await runners[n].claim(7, LEASE_S, max_attempts=3):
            taken[n] += claims
            for claim in claims:
                assert await runners[n].finish(claim, DONE, _answer(claim))

    await asyncio.gather(*(drain(n) for n in range(len(runners))))
    lines = [(c.batch_id, c.line_no) for claims in taken for c in claims]
    assert len(lines) == len(set(lines)) == 120
    assert all(claims for claims in taken), "every runner got work"
    batch = await _batch(engine, work.id)
    assert (batch["total"], batch["completed"], batch["failed"]) == (120, 120, 0)


async def test_a_lost_lease_cannot_write_and_the_line_is_answered_once(engine: AsyncEngine) -> None:
    first, second = LineQueue(engine, "first"), LineQueue(engine, "second")
    work = await _started(engine, 1, first)
    (mine,) = await first.claim(1, 0.2, max_attempts=5)
    assert await second.claim(1, LEASE_S, max_attempts=5) == []  # leased: not claimable
    await asyncio.sleep(0.3)  # the first runner stalls past its lease
    (theirs,) = await second.claim(1, LEASE_S, max_attempts=5)
    assert (theirs.line_no, theirs.attempts) == (mine.line_no, 2)
    assert not await first.finish(mine, DONE, _answer(mine))
    assert await second.finish(theirs, DONE, _answer(theirs))
    assert not await second.finish(theirs, DONE, _answer(theirs))  # once
    batch = await _batch(engine, work.id)
    assert (batch["completed"], batch["failed"]) == (1, 0)


async def test_validation_repeated_after_a_crash_adds_no_line_twice(engine: AsyncEngine) -> None:
    crashed, survivor = LineQueue(engine, "crashed"), LineQueue(engine, "survivor")
    store = BatchStore(engine)
    data = jsonl([chat_line(f"v-{i}", "q") for i in range(450)] + ["not json"])
    source = await store.create_file("owner", "batch", "in.jsonl", data)
    batch = await store.create_batch("owner", source["id"], CHAT, "24h", None)
    zombie = await crashed.take_batch(0.1)
    assert zombie is not None
    assert zombie.id == batch["id"]
    await asyncio.sleep(0.2)
    work = await survivor.take_batch(LEASE_S)
    assert work is not None
    assert work.id == batch["id"]
    lines = read_lines(b"".join([c async for c in read_file(engine, work.input_file_id)]), CHAT)
    await survivor.add_lines(work, lines)
    await crashed.add_lines(zombie, lines)  # the first one wakes up and carries on
    assert await survivor.counts(work.id) == {"pending": 450, LINE_FAILED: 1}
    row = await _batch(engine, work.id)
    assert (row["status"], row["total"], row["failed"]) == (IN_PROGRESS, 451, 1)


async def test_a_line_whose_runners_keep_dying_fails_after_its_attempts(
    engine: AsyncEngine,
) -> None:
    queue = LineQueue(engine, "dying")
    work = await _started(engine, 1, queue)
    for _ in range(2):
        assert len(await queue.claim(1, 0.05, max_attempts=2)) == 1
        await asyncio.sleep(0.1)  # died: the lease lapses
    assert await queue.claim(1, LEASE_S, max_attempts=2) == []
    assert await queue.counts(work.id) == {LINE_FAILED: 1}
    async with engine.connect() as conn:
        result = await conn.scalar(
            select(tables.lines.c.result).where(tables.lines.c.batch_id == work.id)
        )
    assert json.loads(str(result))["error"]["code"] == "upstream_unavailable"


async def test_an_expired_batch_keeps_its_answers_and_fails_the_rest(engine: AsyncEngine) -> None:
    queue = LineQueue(engine, "expiring")
    work = await _started(engine, 5, queue)
    for claim in await queue.claim(2, LEASE_S, max_attempts=3):
        await queue.finish(claim, DONE, _answer(claim))
    async with engine.begin() as conn:
        await conn.execute(
            update(tables.batches).where(tables.batches.c.id == work.id).values(expires_ms=1)
        )
    ending = await queue.take_batch(LEASE_S)
    assert ending is not None
    assert (ending.id, ending.status, ending.expired) == (
        work.id,
        FINALIZING,
        True,
    )
    assert await finalize(queue, ending) == EXPIRED
    row = await _batch(engine, work.id)
    assert (row["status"], row["completed"], row["failed"]) == (EXPIRED, 2, 3)
    errors = b"".join([c async for c in read_file(engine, str(row["error_file_id"]))])
    codes = [json.loads(line)["error"]["code"] for line in errors.splitlines()]
    assert codes == ["batch_expired"] * 3


async def test_a_finisher_that_dies_is_followed_by_one_writing_the_same_files(
    engine: AsyncEngine,
) -> None:
    dying, survivor = LineQueue(engine, "dies"), LineQueue(engine, "finishes")
    work = await _started(engine, 3, dying)
    claims = await dying.claim(3, LEASE_S, max_attempts=3)
    for claim in claims:
        await dying.finish(claim, DONE, _answer(claim))
    first = await dying.take_batch(0.1)
    assert first is not None
    assert first.status == FINALIZING
    output_id = result_file_id(work.id, "output")
    await write_results(engine, first, DONE, output_id)  # then it dies
    await asyncio.sleep(0.2)
    second = await survivor.take_batch(LEASE_S)
    assert second is not None
    assert second.id == work.id
    assert await finalize(survivor, second) == COMPLETED
    assert await finalize(dying, first) is None  # no longer its batch
    row = await _batch(engine, work.id)
    assert (row["status"], row["output_file_id"], row["error_file_id"]) == (
        COMPLETED,
        output_id,
        None,
    )
    output = b"".join([c async for c in read_file(engine, output_id)]).splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == ["id-0", "id-1", "id-2"]
