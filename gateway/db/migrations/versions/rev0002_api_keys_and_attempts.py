"""API keys (hashed, with per-key limits) and the number of worker attempts per request.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", mysql.BIGINT(unsigned=True), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", mysql.VARBINARY(32), nullable=False),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("revoked_at", mysql.DATETIME(fsp=3)),
        sa.Column("requests_per_minute", mysql.INTEGER(unsigned=True)),
        sa.Column("tokens_per_minute", mysql.INTEGER(unsigned=True)),
        sa.Column("max_concurrent", mysql.INTEGER(unsigned=True)),
        # JSON list of model ids the key may use; NULL: every model.
        sa.Column("allowed_models", sa.JSON()),
        sa.UniqueConstraint("key_id", name="uq_api_keys_key_id"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.add_column("interactions", sa.Column("upstream_attempts", mysql.SMALLINT(unsigned=True)))


def downgrade() -> None:
    op.drop_column("interactions", "upstream_attempts")
    op.drop_table("api_keys")
