"""The interaction log's MySQL side: multi-row INSERTs, outage detection, poison isolation.

A failed INSERT is read as an outage (connection errors, or MySQL not answering
``SELECT 1`` right after the error: DatabaseUnavailable, and the writer spools) or as bad
data (the batch is split in halves until the failing row is alone; that row is stored
sanitized with ``poisoned=1``, or in minimal form, or kept in the spool's rejected file).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import chain

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.interactions.metrics import InteractionLogMetrics
from gateway.interactions.records import (
    Row,
    estimated_size,
    image_rows,
    minimal_row,
    row_params,
    sanitize_row,
)
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.spool import Spool
from gateway.interactions.statements import (
    MAX_STATEMENT_BYTES,
    DatabaseUnavailable,
    describe,
    image_insert_sql,
    insert_sql,
    is_outage,
)

log = logging.getLogger("gateway.interactions")


class LogDatabase:
    """Writes rows of the interaction log to MySQL through the engine it is handed."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: InteractionLogSettings,
        metrics: InteractionLogMetrics,
        spool: Spool,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._spool = spool  # its rejected file keeps rows MySQL refuses in every form

    async def insert(self, rows: Sequence[Row]) -> int:
        """Insert rows in one transaction; return how many were already there (a no-op).

        The engine's connections do not ask for found rows (gateway/db/engine.py), so the
        affected-row count is the rows really inserted."""
        params = tuple(chain.from_iterable(row_params(row) for row in rows))
        images = [image for row in rows for image in image_rows(row)]
        async with asyncio.timeout(self._settings.write_timeout_s):
            async with self._engine.begin() as conn:
                result = await conn.exec_driver_sql(insert_sql(len(rows)), params)
                if images:
                    await conn.exec_driver_sql(
                        image_insert_sql(len(images)), tuple(chain.from_iterable(images))
                    )
        return max(0, len(rows) - max(0, result.rowcount))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s + 1.0):
                async with self._engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

    async def _raise_if_outage(self, exc: Exception) -> None:
        if is_outage(exc) or not await self.ping():
            raise DatabaseUnavailable(describe(exc)) from exc

    async def write(self, rows: Sequence[Row]) -> int:
        """Insert rows, isolating poison by bisection; return how many of them MySQL
        already held (a replay of rows written before, or a key collision: never silent).

        Raises DatabaseUnavailable when MySQL is down (rows before it may be in: the caller
        spools them all, and the replay's idempotence absorbs the overlap).
        """
        duplicates = 0
        for part in self._split(rows):
            try:
                duplicates += await self.insert(part)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._raise_if_outage(exc)
                error = exc
            if len(part) == 1:
                duplicates += await self._write_poisoned(part[0], error)
            else:
                middle = len(part) // 2
                duplicates += await self.write(part[:middle])
                duplicates += await self.write(part[middle:])
        return duplicates

    @staticmethod
    def _split(rows: Sequence[Row]) -> list[Sequence[Row]]:
        parts: list[Sequence[Row]] = []
        start, size = 0, 0
        for index, row in enumerate(rows):
            row_size = estimated_size(row)
            if index > start and size + row_size > MAX_STATEMENT_BYTES:
                parts.append(rows[start:index])
                start, size = index, 0
            size += row_size
        if start < len(rows):
            parts.append(rows[start:])
        return parts

    async def _write_poisoned(self, row: Row, error: Exception) -> int:
        reason = describe(error)
        for candidate in (sanitize_row(row, reason), minimal_row(row, reason)):
            try:
                duplicates = await self.insert([candidate])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._raise_if_outage(exc)
                continue
            self._metrics.poisoned.inc()
            log.warning(
                "interaction %r refused by MySQL (%s): stored sanitized, poisoned=1",
                candidate["request_id"],
                reason,
            )
            return duplicates
        await asyncio.to_thread(self._spool.reject, row, reason)
        self._metrics.dropped.labels("rejected").inc()
        log.error(
            "interaction %r refused even in minimal form: kept in %s",
            row.get("request_id"),
            self._spool.rejected_path,
        )
        return 0
