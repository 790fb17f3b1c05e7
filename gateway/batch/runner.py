"""The batch runner's loop: validate new batches, feed lines into idle capacity, write each
result once, finish batches. Any number of runners may run side by side (queue.py).

A runner that is killed loses nothing: its claimed lines come back to the queue when their
leases run out, a batch it was validating or finishing is taken again, and every step is
safe to repeat. On SIGTERM it stops claiming and finishes what it has in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy import select

from gateway.batch.feeder import Capacity, LineSender, Outcome
from gateway.batch.finalize import finalize
from gateway.batch.lines import read_lines
from gateway.batch.metrics import RunnerMetrics
from gateway.batch.objects import VALIDATING, now_ms
from gateway.batch.queue import DONE, LINE_FAILED, BatchWork, Claim, LineQueue, batch_stats
from gateway.batch.settings import BatchSettings
from gateway.batch.store import read_file
from gateway.batch.tables import files

log = logging.getLogger("gateway.batch")

_MAX_BACKOFF_S: Final = 60.0
T = TypeVar("T")


class Runner:
    def __init__(
        self,
        settings: BatchSettings,
        queue: LineQueue,
        sender: LineSender,
        capacity: Capacity,
        metrics: RunnerMetrics,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._sender = sender
        self._capacity = capacity
        self._metrics = metrics
        # Every claimed line until its result is written (their leases are renewed)...
        self._in_flight: dict[asyncio.Task[None], Claim] = {}
        # ...of which these wait for the gateway: the concurrency counts only these, so the
        # next line is claimed while the last one's result is being written.
        self._sending = 0
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        renewer = asyncio.create_task(self._renew_forever(), name="batch-lease-renewal")
        # Batches are validated and finished beside the feeding, so that neither waits.
        housekeeper = asyncio.create_task(self._housekeep(stop), name="batch-housekeeping")
        try:
            while not stop.is_set():
                claimed = await self._guarded(self._feed()) or 0
                if claimed == 0:
                    await self._sleep(stop)
            if self._in_flight:
                await asyncio.wait(list(self._in_flight))
            await housekeeper
        finally:
            for task in (renewer, housekeeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _housekeep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._guarded(self._housekeeping())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.poll_interval_s)

    async def _guarded(self, work: Awaitable[T]) -> T | None:
        """Run one step; a database or gateway outage is logged and the loop goes on."""
        try:
            return await work
        except Exception:
            log.exception("batch runner step failed; trying again shortly")
            await asyncio.sleep(self._settings.poll_interval_s)
            return None

    async def _sleep(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            timeout = self._settings.poll_interval_s
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    # -- lines ---------------------------------------------------------------------------------

    async def _feed(self) -> int:
        free = self._settings.concurrency - self._sending
        if free <= 0 or not await self._capacity.open():
            self._metrics.feeding.set(0 if free > 0 else 1)
            return 0
        self._metrics.feeding.set(1)
        claims = await self._queue.claim(free, self._settings.lease_s, self._settings.max_attempts)
        for claim in claims:
            self._sending += 1
            task = asyncio.create_task(self._run_line(claim))
            self._in_flight[task] = claim
            task.add_done_callback(self._line_done)
        self._metrics.in_flight.set(len(self._in_flight))
        return len(claims)

    def _line_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._metrics.in_flight.set(len(self._in_flight))
        if not task.cancelled() and task.exception() is not None:
            log.error("batch line task failed", exc_info=task.exception())
        self._wake.set()

    async def _run_line(self, claim: Claim) -> None:
        started = time.perf_counter()
        try:
            outcome = await self._sender.send(claim)
        finally:
            self._sending -= 1
            self._wake.set()
        self._metrics.line_seconds.observe(time.perf_counter() - started)
        if outcome.state == "retry" and claim.attempts < self._settings.max_attempts:
            pause = max(outcome.retry_after_s, min(2.0**claim.attempts, _MAX_BACKOFF_S))
            retry_at = now_ms() + int(pause * 1000)
            await self._persist(lambda: self._retry(claim, retry_at))
            self._metrics.lines.labels("retried").inc()
            return
        state = DONE if outcome.state == "done" else LINE_FAILED
        written = await self._persist(lambda: self._write(claim, state, outcome))
        outcome_label = ("done" if state == DONE else "failed") if written else "lost"
        self._metrics.lines.labels(outcome_label).inc()

    async def _retry(self, claim: Claim, retry_at_ms: int) -> bool:
        await self._queue.retry(claim, retry_at_ms)
        return True

    async def _write(self, claim: Claim, state: str, outcome: Outcome) -> bool:
        return await self._queue.finish(claim, state, outcome.result)

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T | None:
        """A result's write, tried again while the database is away (within the lease: after
        that the line is another runner's, and its own answer will be written instead)."""
        deadline = time.monotonic() + self._settings.lease_s
        while True:
            try:
                return await write()
            except Exception:
                if time.monotonic() > deadline:
                    log.exception("could not write a batch line's result; its lease will lapse")
                    return None
                await asyncio.sleep(1.0)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            for token in {claim.token for claim in self._in_flight.values()}:
                await self._guarded(self._renew(token))

    async def _renew(self, token: str) -> bool:
        await self._queue.renew(token, self._settings.lease_s)
        return True

    # -- batches -------------------------------------------------------------------------------

    async def _housekeeping(self) -> bool:
        for _ in range(8):  # a few per round: feeding lines must not wait long
            work = await self._queue.take_batch(self._settings.lease_s)
            if work is None:
                break
            try:
                if work.status == VALIDATING:
                    await self._validate(work)
                else:
                    final = await finalize(self._queue, work)
                    log.info("batch %s finished: %s", work.id, final)
            except Exception:
                await self._queue.release(work)
                raise
        stats = await batch_stats(self._queue.engine)
        now = now_ms()
        self._metrics.queued.set(stats.queued)
        self._metrics.active.set(stats.active)
        self._metrics.oldest_age.set((now - stats.oldest_ms) / 1000 if stats.oldest_ms else 0)
        quiet = stats.quiet_since_ms
        self._metrics.stalled.set((now - quiet) / 1000 if quiet else 0)
        return True

    async def _validate(self, work: BatchWork) -> None:
        data = b"".join(
            [chunk async for chunk in read_file(self._queue.engine, work.input_file_id)]
        )
        if not data and not await self._file_exists(work.input_file_id):
            await self._queue.fail_batch(work, [_error("The input file no longer exists.")])
            return
        lines = await asyncio.to_thread(read_lines, data, work.endpoint)
        if not lines or len(lines) > self._settings.max_lines:
            message = f"The input file must hold 1 to {self._settings.max_lines} lines."
            await self._queue.fail_batch(work, [_error(message)])
            return
        await self._queue.add_lines(work, lines)
        self._wake.set()  # its lines are waiting
        log.info("batch %s validated: %d lines", work.id, len(lines))

    async def _file_exists(self, file_id: str) -> bool:
        async with self._queue.engine.connect() as conn:
            found = await conn.scalar(select(files.c.id).where(files.c.id == file_id))
        return found is not None


def _error(message: str) -> dict[str, object]:
    return {"code": "invalid_file", "message": message, "param": "input_file_id", "line": None}
