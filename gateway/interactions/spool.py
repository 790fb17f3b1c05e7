"""The durable local spool: append-only JSON lines, rotated into sealed files for replay.

Layout, for ``spool_path = .run/interactions/spool.jsonl``::

    spool.jsonl                          active file: appends only (O_APPEND)
    spool.jsonl.00001764000000000000.replay   sealed by rotate(), replayed oldest first
    spool.jsonl.rejected.jsonl           rows MySQL refused even in minimal form (rare)
    spool.jsonl.lock                     flock held by the one process that owns the spool

Each line is one row (``records.to_row``), ASCII-only JSON, written with its newline in a
single write(2). fsync policy: the writer appends a whole batch and fsyncs once per batch
(``spool_fsync=True``, the default) before it reports those records durable; records that
``submit()`` spools itself when the queue is full are written without fsync on the event loop
and fsynced by the writer task at its next step (within one flush interval). A torn last line
after a crash is skipped on replay and counted; a newline is added on reopen so the next
append starts clean.

Size bound: ``max_bytes`` across the active and sealed files. An append that would pass it
is refused whole (``SpoolFull``); the writer counts those records as dropped (reason
``spool_full``). The rows already on disk are kept: dropping the newest is what keeps the
file append-only, and the alert on ``gateway_interactions_spool_bytes`` fires long before.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.interactions.records import Row


class SpoolError(Exception):
    pass


class SpoolFull(SpoolError):
    pass


class SpoolLocked(SpoolError):
    pass


@dataclass
class Chunk:
    rows: list[Row] = field(default_factory=list)
    next_offset: int = 0
    eof: bool = False
    corrupt: int = 0
    path: Path | None = None


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(row, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        for row in rows
    )


class Spool:
    """Thread-safe: appends come from the event loop (queue full) and from worker threads."""

    def __init__(self, path: Path, max_bytes: int, *, fsync: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync_enabled = fsync
        self.rejected_path = path.with_name(path.name + ".rejected.jsonl")
        self._lock_path = path.with_name(path.name + ".lock")
        self._mutex = threading.Lock()
        self._fd = -1
        self._lock_fd = -1
        self._active_bytes = 0
        self._sealed_bytes = 0
        # Rows (lines) per file, so the gauge and the shutdown log can say how many wait.
        self._active_rows = 0
        self._sealed_rows: dict[Path, int] = {}
        # The replay's place: the sealed file being replayed, the offset and rows done.
        self._cursor: tuple[Path, int] | None = None
        self._replayed_in_file = 0
        # Appends made, and appends an fsync has covered: dirty while they differ. An fsync
        # that fails covers nothing, so the next sync() tries again.
        self._appends = 0
        self._synced = 0

    # --- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolLocked(f"another process holds the spool {self.path}") from None
        self._lock_fd = lock_fd
        self._fd = self._open_active()
        sealed = self.sealed_files()
        self._sealed_bytes = sum(p.stat().st_size for p in sealed)
        self._sealed_rows = {p: _count_lines(p) for p in sealed}

    def _open_active(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        if size > 0:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn line from a crash: end it
                    os.write(fd, b"\n")
                    size += 1
        self._active_bytes = size
        self._active_rows = _count_lines(self.path) if size else 0
        return fd

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                try:
                    if self.dirty and self.fsync_enabled:
                        os.fsync(self._fd)
                        self._synced = self._appends
                finally:
                    os.close(self._fd)
                    self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    # --- size --------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._active_bytes + self._sealed_bytes

    @property
    def rows(self) -> int:
        """Rows not yet replayed, in the active and sealed files (a torn line counts)."""
        waiting = self._active_rows + sum(self._sealed_rows.values()) - self._replayed_in_file
        return max(0, waiting)

    @property
    def active_bytes(self) -> int:
        return self._active_bytes

    @property
    def dirty(self) -> bool:
        """Appended rows no successful fsync has covered yet (never with fsync off)."""
        return self.fsync_enabled and self._appends != self._synced

    def oldest_age_s(self, cursor: tuple[Path, int] | None = None) -> float:
        """Seconds since the oldest record still waiting here arrived (0: spool empty).

        Read from the first row left to replay (``cursor``: a file and offset; by default
        the replay's own), so the alert on records older than N minutes needs no
        bookkeeping per row."""
        cursor = cursor or self._cursor
        files = [*self.sealed_files(), *([self.path] if self._active_bytes else [])]
        for path in files:
            offset = cursor[1] if cursor is not None and cursor[0] == path else 0
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    line = f.readline()
                received = json.loads(line)["received_at_ms"] if line.strip() else None
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile, or a torn line: look at the next file
            if isinstance(received, int):
                return max(0.0, time.time() - received / 1000)
        return 0.0

    # --- writing -----------------------------------------------------------------------
    def append(self, rows: Iterable[Mapping[str, Any]], *, sync: bool) -> int:
        """Append rows (all or none); fsync when ``sync`` and the spool's policy say so."""
        data = encode_rows(rows)
        with self._mutex:
            if self._fd < 0:
                raise SpoolError("the spool is closed")
            if self.bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.path} would pass {self.max_bytes} bytes")
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._active_bytes += len(data)
            self._active_rows += data.count(b"\n")
            self._appends += 1
        if sync:
            self.sync()
        return len(data)

    def sync(self) -> None:
        """fsync what was appended so far (without holding the lock during the fsync).

        Raises OSError when the fsync fails; the rows stay dirty (not durable)."""
        with self._mutex:
            if self._fd < 0 or not self.dirty:
                return
            fd = os.dup(self._fd)
            covered = self._appends
        self._fsync_dup(fd)
        with self._mutex:
            self._synced = max(self._synced, covered)

    @staticmethod
    def _fsync_dup(fd: int) -> None:
        # The dup keeps the file open across a concurrent rotate(); fsync covers every
        # write made before it was taken.
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def reject(self, row: Mapping[str, Any], reason: str) -> None:
        """Keep a row MySQL refused even in minimal form, for a person to look at."""
        line = encode_rows([{"reason": reason, "row": dict(row)}])
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- replay ------------------------------------------------------------------------
    def sealed_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(self.path.name + ".*.replay"))

    def rotate(self) -> Path | None:
        """Seal the active file for replay and start a new one; None when it is empty.

        The sealed file is fsynced after the lock is released: submit() appends under the
        same lock on the event loop, and must never wait for the disk."""
        with self._mutex:
            if self._fd < 0 or self._active_bytes == 0:
                return None
            old = self._fd
            covered = self._appends
            sealed = self.path.with_name(f"{self.path.name}.{time.time_ns():020d}.replay")
            os.replace(self.path, sealed)
            self._sealed_bytes += self._active_bytes
            self._sealed_rows[sealed] = self._active_rows
            self._fd = self._open_active()  # a new, empty active file
        try:
            if self.fsync_enabled:
                os.fsync(old)
        finally:
            os.close(old)
        with self._mutex:
            self._synced = max(self._synced, covered)
        return sealed

    def read_chunk(self, path: Path, offset: int, max_rows: int) -> Chunk:
        chunk = Chunk(next_offset=offset)
        with open(path, "rb") as f:
            f.seek(offset)
            while len(chunk.rows) < max_rows:
                line = f.readline()
                if not line:
                    chunk.eof = True
                    break
                chunk.next_offset += len(line)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    chunk.corrupt += 1
                    continue
                if isinstance(row, dict) and row.get("request_id") is not None:
                    chunk.rows.append(row)
                else:
                    chunk.corrupt += 1
            else:
                chunk.eof = f.read(1) == b""
        return chunk

    def next_chunk(self, max_rows: int) -> Chunk | None:
        """The next rows to replay, oldest first (None: nothing is spooled). Call
        ``advance(chunk)`` once they are in MySQL; until then the same rows come again."""
        if self._cursor is None:
            files = self.sealed_files() or [sealed for sealed in (self.rotate(),) if sealed]
            if not files:
                return None
            self._cursor = (files[0], 0)
        path, offset = self._cursor
        chunk = self.read_chunk(path, offset, max_rows)
        chunk.path = path
        return chunk

    def advance(self, chunk: Chunk) -> None:
        """The chunk is in MySQL: move past it, and delete its file once all of it is."""
        assert chunk.path is not None, "a chunk from next_chunk()"
        if chunk.eof:
            self.remove(chunk.path)
            self._cursor, self._replayed_in_file = None, 0
        else:
            self._cursor = (chunk.path, chunk.next_offset)
            self._replayed_in_file += len(chunk.rows) + chunk.corrupt

    def remove(self, path: Path) -> None:
        """Delete a sealed file once every row in it is in MySQL."""
        size = path.stat().st_size
        path.unlink()
        with self._mutex:
            self._sealed_bytes = max(0, self._sealed_bytes - size)
            self._sealed_rows.pop(path, None)


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count
