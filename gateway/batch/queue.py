"""The runner's side of the store: claims with leases, results written once, and the
batch's way from validating to a final status. Safe with any number of runners.

* A claim is a transaction: the lines are picked with ``FOR UPDATE SKIP LOCKED`` (another
  runner's claim in progress is skipped, not waited on) and marked ``running`` with this
  claim's token until ``lease_until``. A runner renews the leases of what it has in
  flight; one that dies loses its lines when they expire, and another runner takes them.
* A result is written by ``UPDATE ... WHERE lease_token = <the claim's>``: only the
  current holder can write it, and only once (the line leaves ``running``); the batch's
  counters move in the same transaction, only when the line did.
* A batch (validating, or ready to finish) is taken the same way, with a lease on its row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.batch import tables
from gateway.batch.lines import InputLine, result_line
from gateway.batch.objects import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    VALIDATING,
    now_ms,
)
from gateway.errors import ErrorCode, GatewayError

PENDING: Final = "pending"
RUNNING: Final = "running"
DONE: Final = "done"
LINE_FAILED: Final = "failed"
_OPEN: Final = (PENDING, RUNNING)
_INSERT_ROWS: Final = 200
# The status a batch the runner finishes ends in (an expired one: EXPIRED).
FINAL_STATUS: Final = {FINALIZING: COMPLETED, CANCELLING: CANCELLED}

L, B = tables.lines, tables.batches


@dataclass(frozen=True, slots=True)
class Claim:
    batch_id: str
    line_no: int
    custom_id: str
    url: str
    body: str
    owner: str
    attempts: int  # this claim included
    token: str


@dataclass(frozen=True, slots=True)
class BatchWork:
    """A batch taken for validation or for finishing, and what to do with it."""

    id: str
    owner: str
    status: str
    endpoint: str
    input_file_id: str
    expired: bool = False


class LineQueue:
    def __init__(self, engine: AsyncEngine, runner_id: str) -> None:
        self.engine = engine
        self.runner_id = runner_id

    # -- lines ---------------------------------------------------------------------------------

    async def claim(self, count: int, lease_s: float, max_attempts: int) -> list[Claim]:
        """Up to ``count`` lines of in-progress batches, oldest batch first. A line already
        claimed ``max_attempts`` times (its runners kept dying) fails instead."""
        now = now_ms()
        token = uuid.uuid4().hex
        claims: list[Claim] = []
        async with self.engine.begin() as conn:
            # The oldest in-progress batches first (FIFO); a few, in case the oldest have
            # only leased lines left.
            active = await conn.execute(
                select(B.c.id, B.c.owner)
                .where(B.c.status == IN_PROGRESS)
                .order_by(B.c.created_ms)
                .limit(16)
            )
            for batch_id, owner in active.all():
                rows = await conn.execute(
                    select(L.c.line_no, L.c.custom_id, L.c.url, L.c.body, L.c.attempts)
                    .where(L.c.batch_id == batch_id, L.c.state.in_(_OPEN), L.c.lease_until <= now)
                    .limit(count - len(claims))
                    .with_for_update(skip_locked=True)
                )
                taken, exhausted = [], []
                for line_no, custom_id, url, body, attempts in rows.all():
                    if attempts >= max_attempts:
                        exhausted.append((line_no, custom_id))
                        continue
                    taken.append(line_no)
                    claims.append(
                        Claim(batch_id, line_no, custom_id, url, body, owner, attempts + 1, token)
                    )
                if taken:
                    await conn.execute(
                        update(L)
                        .where(L.c.batch_id == batch_id, L.c.line_no.in_(taken))
                        .values(
                            state=RUNNING,
                            lease_token=token,
                            lease_until=now + int(lease_s * 1000),
                            attempts=L.c.attempts + 1,
                        )
                    )
                for line_no, custom_id in exhausted:
                    error = GatewayError(
                        ErrorCode.UPSTREAM_UNAVAILABLE,
                        f"The line was tried {max_attempts} times without an answer.",
                    )
                    result = result_line(custom_id, error=error)
                    await self._finish(conn, batch_id, line_no, None, LINE_FAILED, result, now)
                if len(claims) >= count:
                    break
        return claims

    async def renew(self, token: str, lease_s: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(L)
                .where(L.c.lease_token == token, L.c.state == RUNNING)
                .values(lease_until=now_ms() + int(lease_s * 1000))
            )

    async def finish(self, claim: Claim, state: str, result: str) -> bool:
        """Write the line's result (done or failed); False when the claim was lost."""
        async with self.engine.begin() as conn:
            return await self._finish(
                conn, claim.batch_id, claim.line_no, claim.token, state, result, now_ms()
            )

    @staticmethod
    async def _finish(
        conn: AsyncConnection,
        batch_id: str,
        line_no: int,
        token: str | None,
        state: str,
        result: str,
        now: int,
    ) -> bool:
        where = [L.c.batch_id == batch_id, L.c.line_no == line_no, L.c.state.in_(_OPEN)]
        if token is not None:
            where += [L.c.lease_token == token, L.c.state == RUNNING]
        written = await conn.execute(
            update(L)
            .where(*where)
            .values(state=state, result=result, finished_ms=now, lease_token=None)
        )
        if written.rowcount != 1:
            return False
        counter = B.c.completed if state == DONE else B.c.failed
        await conn.execute(
            update(B).where(B.c.id == batch_id).values({counter: counter + 1, "progress_ms": now})
        )
        return True

    async def retry(self, claim: Claim, not_before_ms: int) -> None:
        """Give the line back (a 429, 5xx or no answer) to be tried again after a pause."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(L)
                .where(
                    L.c.batch_id == claim.batch_id,
                    L.c.line_no == claim.line_no,
                    L.c.lease_token == claim.token,
                    L.c.state == RUNNING,
                )
                .values(state=PENDING, lease_token=None, lease_until=not_before_ms)
            )

    # -- batches -------------------------------------------------------------------------------

    async def take_batch(self, lease_s: float) -> BatchWork | None:
        """A batch to validate, or one ready to finish: its lines all done (in progress),
        its in-flight lines done (cancelling), its window passed, or a finisher that died."""
        now = now_ms()
        ready = ~exists().where(
            L.c.batch_id == B.c.id,
            or_(
                and_(B.c.status == IN_PROGRESS, L.c.state.in_(_OPEN)),
                and_(L.c.state == RUNNING, L.c.lease_until > now),
            ),
        )
        due = or_(
            B.c.status.in_((VALIDATING, FINALIZING)),
            and_(B.c.status.in_((IN_PROGRESS, CANCELLING)), or_(ready, B.c.expires_ms < now)),
        )
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        B.c.id,
                        B.c.owner,
                        B.c.status,
                        B.c.endpoint,
                        B.c.input_file_id,
                        B.c.expires_ms,
                        B.c.expired_ms,
                    )
                    .where(due, B.c.lease_until < now)
                    .order_by(B.c.created_ms)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if row is None:
                return None
            batch_id, owner, status, endpoint, input_file_id, expires_ms, expired_ms = row
            values: dict[str, Any] = {
                "lease_owner": self.runner_id,
                "lease_until": now + int(lease_s * 1000),
            }
            # No more claims once it is finalizing; an expiry is noted first, so a finisher
            # that dies half-way is followed by one that still expires what is left.
            expired = expired_ms is not None
            if status == IN_PROGRESS:
                values.update(status=FINALIZING, finalizing_ms=now)
                if expires_ms < now:
                    values["expired_ms"] = now
                    expired = True
                status = FINALIZING
            await conn.execute(update(B).where(B.c.id == batch_id).values(values))
        return BatchWork(batch_id, owner, status, endpoint, input_file_id, expired)

    async def add_lines(self, work: BatchWork, lines: Sequence[InputLine]) -> None:
        """Insert the lines (again after a crash: rows already there are kept), then start."""
        now = now_ms()
        for start in range(0, len(lines), _INSERT_ROWS):
            rows = [
                {
                    "batch_id": work.id,
                    "line_no": line.line_no,
                    "custom_id": line.custom_id,
                    "url": line.url,
                    "body": line.body,
                    "state": LINE_FAILED if line.result is not None else PENDING,
                    "result": line.result,
                    "finished_ms": now if line.result is not None else None,
                }
                for line in lines[start : start + _INSERT_ROWS]
            ]
            async with self.engine.begin() as conn:
                await conn.execute(insert(L).prefix_with("IGNORE"), rows)
        invalid = sum(1 for line in lines if line.result is not None)
        await self._set(
            work,
            VALIDATING,
            status=IN_PROGRESS,
            in_progress_ms=now,
            total=len(lines),
            failed=invalid,
            progress_ms=now,
        )

    async def fail_batch(self, work: BatchWork, errors: list[dict[str, Any]]) -> None:
        """The input file itself is unusable: the batch fails, with OpenAI's errors list."""
        await self._set(work, VALIDATING, status=FAILED, failed_ms=now_ms(), errors=errors)

    async def expire_lines(self, work: BatchWork) -> None:
        """Lines not done within the window fail with batch_expired (the error file)."""
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                select(L.c.line_no, L.c.custom_id).where(
                    L.c.batch_id == work.id, L.c.state.in_(_OPEN)
                )
            )
            error = GatewayError(
                ErrorCode.BATCH_EXPIRED, "The line was not done within the completion window."
            )
            now = now_ms()
            for line_no, custom_id in rows.all():
                result = result_line(custom_id, error=error)
                await self._finish(conn, work.id, line_no, None, LINE_FAILED, result, now)

    async def _set(self, work: BatchWork, expected: str, **values: Any) -> bool:
        """Move the batch on, if it is still ``expected`` and ours; the lease is let go."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(B)
                .where(B.c.id == work.id, B.c.status == expected, B.c.lease_owner == self.runner_id)
                .values(lease_owner=None, lease_until=0, **values)
            )
        return bool(done.rowcount == 1)

    async def release(self, work: BatchWork) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(B)
                .where(B.c.id == work.id, B.c.lease_owner == self.runner_id)
                .values(lease_owner=None, lease_until=0)
            )

    async def counts(self, batch_id: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(L.c.state, func.count()).where(L.c.batch_id == batch_id).group_by(L.c.state)
            )
            return {state: int(n) for state, n in rows.all()}


@dataclass(frozen=True, slots=True)
class BatchStats:
    queued: int  # open lines of in-progress batches
    active: int  # batches not in a final status
    oldest_ms: int | None  # created_ms of the oldest of them
    quiet_since_ms: int | None  # the in-progress batch longest without a finished line


async def batch_stats(engine: AsyncEngine) -> BatchStats:
    """What the runner's gauges show, read from the database."""
    async with engine.connect() as conn:
        queued = await conn.scalar(
            select(func.count())
            .select_from(L.join(B, B.c.id == L.c.batch_id))
            .where(B.c.status == IN_PROGRESS, L.c.state.in_(_OPEN))
        )
        active, oldest = (
            await conn.execute(
                select(func.count(), func.min(B.c.created_ms)).where(B.c.status.in_(ACTIVE))
            )
        ).one()
        quiet = await conn.scalar(
            select(func.min(func.coalesce(B.c.progress_ms, B.c.in_progress_ms))).where(
                B.c.status == IN_PROGRESS
            )
        )
    return BatchStats(int(queued or 0), int(active or 0), oldest, quiet)
