"""The worker's pool on every interaction row (issue 13: canary rollouts), so a canary's
error rate and latency can be compared with the stable pool's, row by row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("interactions", sa.Column("pool", sa.String(32)))


def downgrade() -> None:
    op.drop_column("interactions", "pool")
