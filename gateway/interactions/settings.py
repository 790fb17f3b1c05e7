"""Settings of the interaction log, read from the environment with the prefix ``GATEWAY_LOG_``.

Times are in seconds, sizes in bytes, caps in characters.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

IpMode = Literal["full", "truncated", "none"]

DEFAULT_DATABASE_URL = "mysql://vlm:vlm@127.0.0.1:3306/vlm_serve"
# MEDIUMTEXT holds 16 MiB; at up to 4 bytes a character, 4 M characters always fit.
MAX_TEXT_CHARS = 4 * 1024 * 1024 - 1


class InteractionLogSettings(BaseSettings):
    """Everything the interaction log can be told (env: GATEWAY_LOG_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_LOG_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Off: submit() does nothing (no database, no spool). For development without MySQL.
    enabled: bool = True
    # Any MySQL URL: mysql://user:password@host:3306/database. The writer swaps in asyncmy,
    # Alembic and the CLI PyMySQL.
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)

    # Batching: a batch is written when it holds batch_size records or when its oldest record
    # has waited flush_interval_s, whichever comes first.
    batch_size: int = Field(default=200, gt=0, le=5000)
    flush_interval_s: float = Field(default=0.5, gt=0, le=60)
    # Records waiting in memory; past this, submit() appends straight to the spool.
    queue_size: int = Field(default=10_000, gt=0)

    # A batch that takes longer than this counts as "MySQL is slow": it goes to the spool
    # (the insert may still land; the replay is idempotent).
    write_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    # While MySQL is down, probe it after retry_initial_s, doubling up to retry_max_s.
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    # close(): time allowed to write what is queued before the rest goes to the spool.
    close_timeout_s: float = Field(default=10.0, gt=0)

    # Durable local spool (JSON lines). One path per gateway process: a lock file refuses a
    # second writer. Rotated files for replay sit beside it.
    spool_path: Path = Path(".run/interactions/spool.jsonl")
    # Over this many bytes on disk, new records are dropped (counted in
    # gateway_interactions_dropped_total{reason="spool_full"}); alert well before.
    spool_max_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    # fsync the spool after every batch appended to it (and before a record counts as
    # durable). Off: the OS decides (faster, loses the last seconds on a power cut).
    spool_fsync: bool = True

    # What is kept of the texts: longer ones are cut and flagged (prompt_truncated, ...).
    prompt_max_chars: int = Field(default=8000, ge=0, le=MAX_TEXT_CHARS)
    answer_max_chars: int = Field(default=8000, ge=0, le=MAX_TEXT_CHARS)
    # Client IP: "full" as seen, "truncated" (IPv4 /24, IPv6 /48: 203.0.113.0), "none".
    client_ip: IpMode = "truncated"
    # Peers whose X-Real-IP header names the client (our Nginx), as addresses or networks,
    # comma-separated. From any other peer the header is ignored: a client could otherwise
    # write any address into the log. Behind Nginx in another pod, list the pods' network.
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = (
        ip_network("127.0.0.0/8"),
        ip_network("::1/128"),
    )
    # The end-user id a client sends (safety_identifier, else user) is logged only as
    # HMAC-SHA256 under this secret: the same shopper gets the same hash on every replica,
    # and the log never holds the id itself. Unset: the id is not logged at all.
    end_user_hash_secret: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _mysql_url(cls, value: SecretStr) -> SecretStr:
        try:
            url = make_url(value.get_secret_value())
        except Exception as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.get_backend_name() not in ("mysql", "mariadb"):
            raise ValueError("database_url must be a mysql:// (or mariadb://) URL")
        if not url.database:
            raise ValueError("database_url must name a database")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(ip_network(str(part), strict=False) for part in value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError("retry_initial_s must not exceed retry_max_s")
        return self

    @property
    def url(self) -> str:
        return self.database_url.get_secret_value()
