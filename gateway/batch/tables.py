"""The Batch API's tables (created by migration 0007): files, their bytes, batches, lines.

``batch_files`` holds every file (input, output, error) and ``batch_file_chunks`` its
bytes in 1 MiB pieces, so no statement comes near MySQL's max_allowed_packet.
``batches`` holds one row per batch: OpenAI's fields, the counters it reports
(``request_counts``), and a lease for the runner that validates or finalizes it.
``batch_lines`` holds one row per input line: its request, its state
(pending -> running -> done | failed; back to pending on a retryable failure), the
runner's claim on it (``lease_token`` until ``lease_until``) and its result, the line of
the output or error file. ``(batch_id, custom_id)`` is unique: a custom_id is answered
once, and a result is only written by the holder of the line's current claim.
Times are epoch milliseconds.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    JSON,
    Column,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.mysql import BIGINT, INTEGER, MEDIUMBLOB, MEDIUMTEXT, SMALLINT

metadata = MetaData()

ID_CHARS: Final = 40  # "batch_" / "file-" + 32 hex
OWNER_CHARS: Final = 64  # an API key's public id; "" when keys are off
CUSTOM_ID_CHARS: Final = 512
CHUNK_BYTES: Final = 1024 * 1024

files = Table(
    "batch_files",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("owner", String(OWNER_CHARS), nullable=False),
    # batch (uploaded), batch_output, batch_error (written by the runner)
    Column("purpose", String(16), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("bytes", BIGINT(unsigned=True), nullable=False),
    Column("created_ms", BIGINT(unsigned=True), nullable=False),
    Index("ix_batch_files_owner_created", "owner", "created_ms"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

chunks = Table(
    "batch_file_chunks",
    metadata,
    Column("file_id", String(ID_CHARS), nullable=False),
    Column("seq", INTEGER(unsigned=True), nullable=False),
    Column("data", MEDIUMBLOB, nullable=False),
    PrimaryKeyConstraint("file_id", "seq"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("owner", String(OWNER_CHARS), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(ID_CHARS), nullable=False),
    Column("completion_window", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", JSON),
    Column("errors", JSON),
    Column("output_file_id", String(ID_CHARS)),
    Column("error_file_id", String(ID_CHARS)),
    Column("total", INTEGER(unsigned=True), nullable=False, server_default="0"),
    Column("completed", INTEGER(unsigned=True), nullable=False, server_default="0"),
    Column("failed", INTEGER(unsigned=True), nullable=False, server_default="0"),
    Column("created_ms", BIGINT(unsigned=True), nullable=False),
    Column("expires_ms", BIGINT(unsigned=True), nullable=False),
    Column("in_progress_ms", BIGINT(unsigned=True)),
    Column("finalizing_ms", BIGINT(unsigned=True)),
    Column("completed_ms", BIGINT(unsigned=True)),
    Column("failed_ms", BIGINT(unsigned=True)),
    Column("expired_ms", BIGINT(unsigned=True)),
    Column("cancelling_ms", BIGINT(unsigned=True)),
    Column("cancelled_ms", BIGINT(unsigned=True)),
    # When a line of this batch last finished (the stalled-batch alert reads its age).
    Column("progress_ms", BIGINT(unsigned=True)),
    # The runner validating or finalizing the batch, until then.
    Column("lease_owner", String(128)),
    Column("lease_until", BIGINT(unsigned=True), nullable=False, server_default="0"),
    Index("ix_batches_owner_created", "owner", "created_ms"),
    Index("ix_batches_status_created", "status", "created_ms"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(ID_CHARS), nullable=False),
    Column("line_no", INTEGER(unsigned=True), nullable=False),
    # NULL for a line without a usable custom_id (it fails at validation).
    Column("custom_id", String(CUSTOM_ID_CHARS)),
    Column("url", String(64), nullable=False),
    Column("body", MEDIUMTEXT, nullable=False),
    # pending, running, done, failed
    Column("state", String(8), nullable=False),
    Column("attempts", SMALLINT(unsigned=True), nullable=False, server_default="0"),
    Column("lease_token", String(32)),
    # running: the claim's end; pending: not before (a retry's back-off).
    Column("lease_until", BIGINT(unsigned=True), nullable=False, server_default="0"),
    # The line of the output (done) or error (failed) file.
    Column("result", MEDIUMTEXT),
    Column("finished_ms", BIGINT(unsigned=True)),
    PrimaryKeyConstraint("batch_id", "line_no"),
    UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
    Index("ix_batch_lines_state", "batch_id", "state", "line_no"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
