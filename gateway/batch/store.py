"""Files and batches in MariaDB, as the API routes see them: every query names the owner,
so a key only ever finds its own (another key's id is simply not found)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.batch import tables
from gateway.batch.objects import (
    CANCELLING,
    COMPLETION_WINDOWS,
    IN_PROGRESS,
    VALIDATING,
    new_batch_id,
    new_file_id,
    now_ms,
)
from gateway.config import Settings
from gateway.db.engine import create_log_engine

Row = Mapping[str, Any]


async def write_file(
    conn: AsyncConnection, file_id: str, owner: str, purpose: str, filename: str, data: bytes
) -> dict[str, Any]:
    """Insert a file and its chunks (in the caller's transaction); its row."""
    row = {
        "id": file_id,
        "owner": owner,
        "purpose": purpose,
        "filename": filename,
        "bytes": len(data),
        "created_ms": now_ms(),
    }
    await conn.execute(insert(tables.files).values(row))
    step = tables.CHUNK_BYTES
    for seq, start in enumerate(range(0, len(data), step)):
        chunk = {"file_id": file_id, "seq": seq, "data": data[start : start + step]}
        await conn.execute(insert(tables.chunks).values(chunk))
    return row


async def delete_file(conn: AsyncConnection, file_id: str) -> None:
    await conn.execute(delete(tables.chunks).where(tables.chunks.c.file_id == file_id))
    await conn.execute(delete(tables.files).where(tables.files.c.id == file_id))


async def read_file(engine: AsyncEngine, file_id: str) -> AsyncIterator[bytes]:
    """A file's bytes, one chunk (1 MiB) per query."""
    seq = 0
    while True:
        async with engine.connect() as conn:
            data = await conn.scalar(
                select(tables.chunks.c.data).where(
                    tables.chunks.c.file_id == file_id, tables.chunks.c.seq == seq
                )
            )
        if data is None:
            return
        yield bytes(data)
        seq += 1


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_file(self, owner: str, purpose: str, filename: str, data: bytes) -> Row:
        async with self.engine.begin() as conn:
            return await write_file(conn, new_file_id(), owner, purpose, filename, data)

    async def file(self, owner: str, file_id: str) -> Row | None:
        files = tables.files
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(files).where(files.c.id == file_id, files.c.owner == owner)
            )
            row = result.mappings().first()
        return dict(row) if row is not None else None

    def content(self, file_id: str) -> AsyncIterator[bytes]:
        return read_file(self.engine, file_id)

    async def create_batch(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> Row:
        created = now_ms()
        row: dict[str, Any] = {
            "id": new_batch_id(),
            "owner": owner,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": VALIDATING,
            "metadata": metadata,
            "created_ms": created,
            "expires_ms": created + COMPLETION_WINDOWS[completion_window],
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(tables.batches).values(row))
        found = await self.batch(owner, row["id"])
        assert found is not None
        return found

    async def batch(self, owner: str, batch_id: str) -> Row | None:
        batches = tables.batches
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(batches).where(batches.c.id == batch_id, batches.c.owner == owner)
            )
            row = result.mappings().first()
        return dict(row) if row is not None else None

    async def batches(self, owner: str, after: str | None, limit: int) -> tuple[list[Row], bool]:
        """The owner's batches, newest first, after the batch ``after`` (a cursor); and
        whether more follow."""
        batches = tables.batches
        query = select(batches).where(batches.c.owner == owner)
        if after is not None:
            cursor = await self.batch(owner, after)
            if cursor is None:
                return [], False
            created, cursor_id = cursor["created_ms"], cursor["id"]
            query = query.where(
                or_(
                    batches.c.created_ms < created,
                    and_(batches.c.created_ms == created, batches.c.id < cursor_id),
                )
            )
        query = query.order_by(batches.c.created_ms.desc(), batches.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows: list[Row] = [dict(row) for row in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    async def cancel(self, owner: str, batch_id: str) -> Row | None:
        """validating or in_progress -> cancelling (the runner finishes what is in flight,
        then cancelled); any other status is left as it is."""
        batches = tables.batches
        async with self.engine.begin() as conn:
            await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.owner == owner,
                    batches.c.status.in_((VALIDATING, IN_PROGRESS)),
                )
                .values(status=CANCELLING, cancelling_ms=now_ms())
            )
        return await self.batch(owner, batch_id)


def open_batch_store(settings: Settings, stack: AsyncExitStack) -> BatchStore | None:
    """The API's store (its engine closed by ``stack``); None when batches are off."""
    batch = settings.batch
    if not batch.enabled:
        return None
    url = (batch.database_url or settings.log.database_url).get_secret_value()
    engine = create_log_engine(url, connect_timeout_s=batch.connect_timeout_s)
    stack.push_async_callback(engine.dispose)
    return BatchStore(engine)
