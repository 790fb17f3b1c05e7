"""Structured outputs, tools, n, logprobs and the bookkeeping fields SDKs send (issue 17):
the response_format type, the JSON schema's name and digest, the end user's id as an HMAC,
the client's metadata, the non-default options and the answer's tool calls.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("interactions", sa.Column("response_format", sa.String(16)))
    op.add_column("interactions", sa.Column("schema_name", sa.String(64)))
    op.add_column("interactions", sa.Column("schema_sha256", sa.String(64)))
    op.add_column("interactions", sa.Column("end_user_sha256", sa.String(64)))
    op.add_column("interactions", sa.Column("request_metadata", sa.JSON()))
    op.add_column("interactions", sa.Column("request_options", sa.JSON()))
    op.add_column("interactions", sa.Column("tool_calls", sa.JSON()))
    op.create_index(
        "ix_interactions_end_user_time", "interactions", ["end_user_sha256", "received_at_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_interactions_end_user_time", table_name="interactions")
    for column in (
        "tool_calls", "request_options", "request_metadata", "end_user_sha256",
        "schema_sha256", "schema_name", "response_format",
    ):  # fmt: skip
        op.drop_column("interactions", column)
