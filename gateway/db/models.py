"""SQLAlchemy 2.0 models of the interaction log: one row per request, plus a digest lookup.

``interactions`` holds one row per request the gateway handled (answered, failed or
rejected). ``request_id`` is unique (with ``received_at_ms``, which a replay keeps) and
binary (VARBINARY: case- and trailing-space sensitive, no collation surprises), which is
what makes every write idempotent: the writer inserts with ``ON DUPLICATE KEY UPDATE
request_id = request_id``, so a replayed spool never duplicates a row. Text columns are
utf8mb4 with a binary collation, stored verbatim.

Image digests: the full per-image facts (digest, bytes, width, height, format) live in the
row's ``images`` JSON column. ``interaction_images`` is a narrow lookup table, one row per
(request, image position), indexed by digest: "which requests sent this image?" and "most
repeated images" become index range scans and a GROUP BY on a small table, for any number
of images per request (a generated column over ``images[0]`` would only index the first).
Its rows go in the same transaction as their parent. Both tables are partitioned by day on
``received_at_ms`` (gateway/db/partitions.py), so retention drops whole days from both.

Indexes answer on-call's questions: by time (``received_at_ms``), by API key and time, by
status and time, by image digest (lookup table).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Double,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.mysql import (
    BIGINT,
    DATETIME,
    INTEGER,
    MEDIUMTEXT,
    SMALLINT,
    VARBINARY,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_OPTIONS: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

REQUEST_ID_BYTES = 128


class Base(DeclarativeBase):
    pass


class Interaction(Base):
    """One request: identity, timing, request, outcome. Never image bytes, never API keys."""

    __tablename__ = "interactions"
    __table_args__ = (
        # Partitioned by day on received_at_ms (migration 0006, gateway/db/partitions.py):
        # every unique key holds the partition column.
        UniqueConstraint("request_id", "received_at_ms", name="uq_interactions_request_id"),
        Index("ix_interactions_received_at", "received_at_ms"),
        Index("ix_interactions_key_time", "api_key_id", "received_at_ms"),
        Index("ix_interactions_status_time", "status_code", "received_at_ms"),
        Index("ix_interactions_end_user_time", "end_user_sha256", "received_at_ms"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BIGINT(unsigned=True), primary_key=True, autoincrement=True)
    # Identity
    request_id: Mapped[bytes] = mapped_column(VARBINARY(REQUEST_ID_BYTES), nullable=False)
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    # Timing (epoch milliseconds; durations in milliseconds, fractional)
    received_at_ms: Mapped[int] = mapped_column(BIGINT(unsigned=True), primary_key=True)
    finished_at_ms: Mapped[int | None] = mapped_column(BIGINT(unsigned=True))
    latency_ms: Mapped[float | None] = mapped_column(Double)
    ttft_ms: Mapped[float | None] = mapped_column(Double)
    # Request
    endpoint: Mapped[str] = mapped_column(String(128), nullable=False)
    shape: Mapped[str] = mapped_column(String(8), nullable=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("0"))
    model: Mapped[str | None] = mapped_column(String(128))
    profile: Mapped[str | None] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(MEDIUMTEXT)
    prompt_chars: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    prompt_truncated: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("0")
    )
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    images: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    image_count: Mapped[int] = mapped_column(
        SMALLINT(unsigned=True), nullable=False, server_default=text("0")
    )
    # Outcome
    answer: Mapped[str | None] = mapped_column(MEDIUMTEXT)
    answer_chars: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    answer_truncated: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("0")
    )
    cache: Mapped[str | None] = mapped_column(String(16))
    # cache "similar": the replayed answer's key digest, and the Hamming distance (of 256
    # bits) between the photos (gateway/cache/near/).
    cache_source: Mapped[str | None] = mapped_column(String(64))
    cache_distance: Mapped[int | None] = mapped_column(SMALLINT(unsigned=True))
    status_code: Mapped[int] = mapped_column(SMALLINT(unsigned=True), nullable=False)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(255))
    # The worker's pool (canary rollouts: "stable", "canary"; "default" without pools).
    pool: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    completion_tokens: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    moderation: Mapped[str | None] = mapped_column(String(64))
    # Worker attempts the request made (retries on other workers count); None: no worker.
    upstream_attempts: Mapped[int | None] = mapped_column(SMALLINT(unsigned=True))
    # Structured outputs, tools, n, logprobs and the bookkeeping fields SDKs send: the
    # response_format type, the JSON schema's name and SHA-256, the end user's id as an
    # HMAC (never the id), the client's metadata, the non-default options, the tool calls.
    response_format: Mapped[str | None] = mapped_column(String(16))
    schema_name: Mapped[str | None] = mapped_column(String(64))
    schema_sha256: Mapped[str | None] = mapped_column(String(64))
    end_user_sha256: Mapped[str | None] = mapped_column(String(64))
    request_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The batch a batch line belongs to (gateway/batch/); None for online requests.
    batch_id: Mapped[str | None] = mapped_column(String(40))
    # Bookkeeping: poisoned rows were refused by MySQL as submitted and stored sanitized.
    poisoned: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("0"))
    poison_error: Mapped[str | None] = mapped_column(String(255))
    logged_at: Mapped[datetime] = mapped_column(
        DATETIME(fsp=3), nullable=False, server_default=text("CURRENT_TIMESTAMP(3)")
    )


class InteractionImage(Base):
    """Digest lookup: one row per image of a request, in the order the request sent them."""

    __tablename__ = "interaction_images"
    __table_args__ = (
        Index("ix_interaction_images_digest_time", "digest", "received_at_ms"),
        TABLE_OPTIONS,
    )

    # No foreign key: partitioned tables allow none. Its days are dropped with the
    # interactions' (same partition bounds), not by ON DELETE CASCADE.
    request_id: Mapped[bytes] = mapped_column(VARBINARY(REQUEST_ID_BYTES), primary_key=True)
    position: Mapped[int] = mapped_column(SMALLINT(unsigned=True), primary_key=True)
    digest: Mapped[str] = mapped_column(String(128), nullable=False)
    received_at_ms: Mapped[int] = mapped_column(BIGINT(unsigned=True), primary_key=True)


class ApiKey(Base):
    """A caller's key: only its SHA-256 is stored; ``key_id`` is the public part, shown in
    listings and written to the interaction log. NULL limits mean the gateway's defaults."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("key_id", name="uq_api_keys_key_id"),
        UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BIGINT(unsigned=True), primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    key_hash: Mapped[bytes] = mapped_column(VARBINARY(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DATETIME(fsp=3), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DATETIME(fsp=3))
    requests_per_minute: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    tokens_per_minute: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    max_concurrent: Mapped[int | None] = mapped_column(INTEGER(unsigned=True))
    # Model ids the key may use (403 for others); None: every model.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    # "shared": identical requests of every key share cached answers and generations;
    # "key": the key's cache and coalescing are its own (X-Cache tells no one else's asks).
    cache_scope: Mapped[str] = mapped_column(String(8), nullable=False, server_default="shared")
    # True: an exact miss may be answered from a near-duplicate photo (`--cache near`).
    cache_near: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("0"))
