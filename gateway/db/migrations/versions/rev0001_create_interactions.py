"""Create the interaction log: interactions (one row per request) and interaction_images.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FALSE = sa.text("0")


def upgrade() -> None:
    op.create_table(
        "interactions",
        sa.Column("id", mysql.BIGINT(unsigned=True), primary_key=True, autoincrement=True),
        sa.Column("request_id", mysql.VARBINARY(128), nullable=False),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("client_ip", sa.String(45)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("received_at_ms", mysql.BIGINT(unsigned=True), nullable=False),
        sa.Column("finished_at_ms", mysql.BIGINT(unsigned=True)),
        sa.Column("latency_ms", sa.Double()),
        sa.Column("ttft_ms", sa.Double()),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("shape", sa.String(8), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False, server_default=_FALSE),
        sa.Column("model", sa.String(128)),
        sa.Column("profile", sa.String(64)),
        sa.Column("prompt", mysql.MEDIUMTEXT()),
        sa.Column("prompt_chars", mysql.INTEGER(unsigned=True)),
        sa.Column("prompt_truncated", sa.Boolean(), nullable=False, server_default=_FALSE),
        sa.Column("prompt_sha256", sa.String(64)),
        sa.Column("images", sa.JSON()),
        sa.Column(
            "image_count", mysql.SMALLINT(unsigned=True), nullable=False, server_default=_FALSE
        ),
        sa.Column("answer", mysql.MEDIUMTEXT()),
        sa.Column("answer_chars", mysql.INTEGER(unsigned=True)),
        sa.Column("answer_truncated", sa.Boolean(), nullable=False, server_default=_FALSE),
        sa.Column("cache", sa.String(16)),
        sa.Column("status_code", mysql.SMALLINT(unsigned=True), nullable=False),
        sa.Column("error_type", sa.String(64)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("worker_id", sa.String(255)),
        sa.Column("prompt_tokens", mysql.INTEGER(unsigned=True)),
        sa.Column("completion_tokens", mysql.INTEGER(unsigned=True)),
        sa.Column("moderation", sa.String(64)),
        sa.Column("poisoned", sa.Boolean(), nullable=False, server_default=_FALSE),
        sa.Column("poison_error", sa.String(255)),
        sa.Column(
            "logged_at",
            mysql.DATETIME(fsp=3),
            nullable=False,
            server_default=sa.text("CURRENT_TIMESTAMP(3)"),
        ),
        sa.UniqueConstraint("request_id", name="uq_interactions_request_id"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_interactions_received_at", "interactions", ["received_at_ms"])
    op.create_index("ix_interactions_key_time", "interactions", ["api_key_id", "received_at_ms"])
    op.create_index(
        "ix_interactions_status_time", "interactions", ["status_code", "received_at_ms"]
    )
    op.create_table(
        "interaction_images",
        sa.Column("request_id", mysql.VARBINARY(128), primary_key=True),
        sa.Column("position", mysql.SMALLINT(unsigned=True), primary_key=True),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("received_at_ms", mysql.BIGINT(unsigned=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["interactions.request_id"],
            name="fk_interaction_images_request",
            ondelete="CASCADE",
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(
        "ix_interaction_images_digest_time", "interaction_images", ["digest", "received_at_ms"]
    )


def downgrade() -> None:
    op.drop_table("interaction_images")
    op.drop_table("interactions")
