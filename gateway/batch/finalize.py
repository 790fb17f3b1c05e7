"""A batch's end: its output file (every done line, in input order) and error file (every
failed one), then its final status, counters and file ids in one transaction.

The files' ids are derived from the batch's, and their chunks are rewritten from the
start, so a finisher that dies half-way is followed by one that writes the same files
again; their rows only appear with the final status, so nobody reads a partial file.
"""

from __future__ import annotations

import hashlib
from typing import Final

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.batch import tables
from gateway.batch.objects import EXPIRED, now_ms
from gateway.batch.queue import DONE, FINAL_STATUS, LINE_FAILED, BatchWork, LineQueue

PURPOSE_OUTPUT: Final = "batch_output"
_PAGE: Final = 500
L, B, C = tables.lines, tables.batches, tables.chunks


def result_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


async def write_results(engine: AsyncEngine, work: BatchWork, state: str, file_id: str) -> int:
    """The results of the lines in ``state`` as the file's chunks; its size in bytes."""
    async with engine.begin() as conn:
        await conn.execute(delete(C).where(C.c.file_id == file_id))
    size, seq, last = 0, 0, 0
    pending = bytearray()

    async def flush(data: bytes) -> None:
        nonlocal seq
        async with engine.begin() as conn:
            await conn.execute(insert(C).values(file_id=file_id, seq=seq, data=data))
        seq += 1

    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(L.c.line_no, L.c.result)
                    .where(L.c.batch_id == work.id, L.c.state == state, L.c.line_no > last)
                    .order_by(L.c.line_no)
                    .limit(_PAGE)
                )
            ).all()
        for line_no, result in rows:
            last = line_no
            line = (result or "").encode() + b"\n"
            pending += line
            size += len(line)
            while len(pending) >= tables.CHUNK_BYTES:
                await flush(bytes(pending[: tables.CHUNK_BYTES]))
                del pending[: tables.CHUNK_BYTES]
        if len(rows) < _PAGE:
            break
    if pending:
        await flush(bytes(pending))
    return size


async def finalize(queue: LineQueue, work: BatchWork) -> str | None:
    """Write the files and the final status; the status, or None when the batch was no
    longer ours (another runner took it after our lease ran out)."""
    engine = queue.engine
    if work.expired:
        await queue.expire_lines(work)
    files: dict[str, tuple[str, int]] = {}
    for kind, state in (("output", DONE), ("error", LINE_FAILED)):
        file_id = result_file_id(work.id, kind)
        files[kind] = (file_id, await write_results(engine, work, state, file_id))
    counts = await queue.counts(work.id)
    final = EXPIRED if work.expired else FINAL_STATUS[work.status]
    now = now_ms()
    async with engine.begin() as conn:
        ids: dict[str, str | None] = {}
        for kind, (file_id, size) in files.items():
            await conn.execute(delete(tables.files).where(tables.files.c.id == file_id))
            ids[kind] = None
            if size:
                await conn.execute(
                    insert(tables.files).values(
                        id=file_id,
                        owner=work.owner,
                        purpose=PURPOSE_OUTPUT,
                        filename=f"{work.id}_{kind}.jsonl",
                        bytes=size,
                        created_ms=now,
                    )
                )
                ids[kind] = file_id
        done = await conn.execute(
            update(B)
            .where(B.c.id == work.id, B.c.status == work.status, B.c.lease_owner == queue.runner_id)
            .values(
                {
                    "status": final,
                    f"{final}_ms": now,
                    "output_file_id": ids["output"],
                    "error_file_id": ids["error"],
                    "total": sum(counts.values()),
                    "completed": counts.get(DONE, 0),
                    "failed": counts.get(LINE_FAILED, 0),
                    "lease_owner": None,
                    "lease_until": 0,
                }
            )
        )
        if done.rowcount != 1:
            await conn.rollback()
            return None
    return final
