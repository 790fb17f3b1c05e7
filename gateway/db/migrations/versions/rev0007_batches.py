"""The Batch API (issue 28): files and their bytes, batches, and one row per input line;
and the batch id on every interaction row a batch line causes.

``interactions.batch_id`` is a nullable column at the end of the table, which MariaDB adds
in place without rebuilding the partitions. A batch's rows are also found by their request
ids, ``<batch id>.<line>`` (``WHERE request_id LIKE 'batch_….%'``), on the unique index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ms(name: str, nullable: bool = True) -> sa.Column[int]:
    return sa.Column(name, mysql.BIGINT(unsigned=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", mysql.BIGINT(unsigned=True), nullable=False),
        _ms("created_ms", nullable=False),
        sa.Index("ix_batch_files_owner_created", "owner", "created_ms"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_table(
        "batch_file_chunks",
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("seq", mysql.INTEGER(unsigned=True), nullable=False),
        sa.Column("data", mysql.MEDIUMBLOB, nullable=False),
        sa.PrimaryKeyConstraint("file_id", "seq"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("completion_window", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON),
        sa.Column("errors", sa.JSON),
        sa.Column("output_file_id", sa.String(40)),
        sa.Column("error_file_id", sa.String(40)),
        sa.Column("total", mysql.INTEGER(unsigned=True), nullable=False, server_default="0"),
        sa.Column("completed", mysql.INTEGER(unsigned=True), nullable=False, server_default="0"),
        sa.Column("failed", mysql.INTEGER(unsigned=True), nullable=False, server_default="0"),
        _ms("created_ms", nullable=False),
        _ms("expires_ms", nullable=False),
        _ms("in_progress_ms"),
        _ms("finalizing_ms"),
        _ms("completed_ms"),
        _ms("failed_ms"),
        _ms("expired_ms"),
        _ms("cancelling_ms"),
        _ms("cancelled_ms"),
        _ms("progress_ms"),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", mysql.BIGINT(unsigned=True), nullable=False, server_default="0"),
        sa.Index("ix_batches_owner_created", "owner", "created_ms"),
        sa.Index("ix_batches_status_created", "status", "created_ms"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("line_no", mysql.INTEGER(unsigned=True), nullable=False),
        sa.Column("custom_id", sa.String(512)),
        sa.Column("url", sa.String(64), nullable=False),
        sa.Column("body", mysql.MEDIUMTEXT, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", mysql.SMALLINT(unsigned=True), nullable=False, server_default="0"),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("lease_until", mysql.BIGINT(unsigned=True), nullable=False, server_default="0"),
        sa.Column("result", mysql.MEDIUMTEXT),
        _ms("finished_ms"),
        sa.PrimaryKeyConstraint("batch_id", "line_no"),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
        sa.Index("ix_batch_lines_state", "batch_id", "state", "line_no"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.add_column("interactions", sa.Column("batch_id", sa.String(40)))


def downgrade() -> None:
    op.drop_column("interactions", "batch_id")
    for table in ("batch_lines", "batches", "batch_file_chunks", "batch_files"):
        op.drop_table(table)
