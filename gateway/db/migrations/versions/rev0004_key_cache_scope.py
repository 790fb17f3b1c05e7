"""A key's cache scope (issue 15): "shared" (the default) lets identical requests of every
key share answers and generations; "key" keeps the key's cache and coalescing to itself,
so that X-Cache never tells one tenant what another asked.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("cache_scope", sa.String(8), nullable=False, server_default="shared"),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "cache_scope")
