"""Settings of API-key authentication, read from the environment (prefix ``GATEWAY_AUTH_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class AuthSettings(BaseSettings):
    """Everything API-key authentication can be told (env: GATEWAY_AUTH_<NAME>)."""

    # hide_input_in_errors: a refused database URL must not print its password.
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_AUTH_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Keys are required on /v1/* unless this is false: the explicit development switch,
    # announced by a warning at start-up. Never turn it off where real users can reach.
    enabled: bool = True
    # Where api_keys lives; None: the interaction log's database (GATEWAY_LOG_DATABASE_URL).
    database_url: SecretStr | None = None
    # Every replica reloads its snapshot of the keys this often: a revoked key is refused
    # everywhere within about this long.
    refresh_s: float = Field(default=2.0, gt=0)
    # An unknown key id is looked up in the database once, then refused from memory for
    # this long, so a flood of made-up keys does not become a flood of queries.
    negative_cache_s: float = Field(default=5.0, ge=0)
    negative_cache_size: int = Field(default=10_000, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    # A single lookup of a key not yet in the snapshot gives up after this long (503).
    lookup_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _mysql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            url = make_url(value.get_secret_value())
        except Exception:
            raise ValueError("not a database URL") from None  # never echo a password
        if url.get_backend_name() not in ("mysql", "mariadb") or not url.database:
            raise ValueError("database_url must be a mysql:// URL naming a database")
        return value
