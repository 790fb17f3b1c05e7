"""Near-duplicate photos (issue 26): a key's opt-in (``api_keys.cache_near``), and on each
interaction row the answer a near match replayed and how far its photos were
(``interactions.cache_source``, ``interactions.cache_distance``).

Nullable columns (and a NOT NULL one with a default) at the end of each table: MariaDB adds
them in place, without rebuilding the interactions' partitions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("cache_near", sa.Boolean(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("interactions", sa.Column("cache_source", sa.String(64), nullable=True))
    op.add_column(
        "interactions",
        sa.Column("cache_distance", mysql.SMALLINT(unsigned=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("interactions", "cache_distance")
    op.drop_column("interactions", "cache_source")
    op.drop_column("api_keys", "cache_near")
