"""Daily range partitions for the interaction log (issue 14, log at scale).

Both ``interactions`` and ``interaction_images`` are partitioned by ``received_at_ms``
(see gateway/db/partitions.py). Partitioned InnoDB tables allow no foreign keys
and need the partition column in every unique key, so: the images' foreign key goes (the
two tables' partitions are dropped together instead of ON DELETE CASCADE), the primary
keys become (id, received_at_ms) and (request_id, position, received_at_ms), and the
request id is unique per received_at_ms (a replayed record keeps its received_at_ms, so
replays stay idempotent). Existing rows are kept: days from the oldest row (at most 100
days back; older ones land in p_before) through a week ahead. The ALTERs rebuild both
tables: on a large log, run this in a quiet hour.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from alembic import op

from gateway.db.partitions import DAY_MS, day_start, partition_clause

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_DAYS_BACK = 100
DAYS_AHEAD = 7


def upgrade() -> None:
    conn = op.get_bind()
    now = day_start(time.time_ns() // 1_000_000)
    (oldest,) = conn.exec_driver_sql("SELECT MIN(received_at_ms) FROM interactions").one()
    first = max(day_start(int(oldest)), now - MAX_DAYS_BACK * DAY_MS) if oldest else now
    first = min(first, now)
    clause = partition_clause(first, now + DAYS_AHEAD * DAY_MS)
    op.drop_constraint("fk_interaction_images_request", "interaction_images", type_="foreignkey")
    conn.exec_driver_sql(
        "ALTER TABLE interactions DROP PRIMARY KEY, ADD PRIMARY KEY (id, received_at_ms), "
        "DROP INDEX uq_interactions_request_id, "
        "ADD CONSTRAINT uq_interactions_request_id UNIQUE (request_id, received_at_ms)"
    )
    conn.exec_driver_sql(
        "ALTER TABLE interaction_images DROP PRIMARY KEY, "
        "ADD PRIMARY KEY (request_id, position, received_at_ms)"
    )
    conn.exec_driver_sql(f"ALTER TABLE interactions {clause}")
    conn.exec_driver_sql(f"ALTER TABLE interaction_images {clause}")


def downgrade() -> None:
    conn = op.get_bind()
    for table in ("interaction_images", "interactions"):
        conn.exec_driver_sql(f"ALTER TABLE {table} REMOVE PARTITIONING")
    conn.exec_driver_sql(
        "ALTER TABLE interaction_images DROP PRIMARY KEY, ADD PRIMARY KEY (request_id, position)"
    )
    conn.exec_driver_sql(
        "ALTER TABLE interactions DROP PRIMARY KEY, ADD PRIMARY KEY (id), "
        "DROP INDEX uq_interactions_request_id, "
        "ADD CONSTRAINT uq_interactions_request_id UNIQUE (request_id)"
    )
    op.create_foreign_key(
        "fk_interaction_images_request",
        "interaction_images",
        "interactions",
        ["request_id"],
        ["request_id"],
        ondelete="CASCADE",
    )
