"""Settings of the Batch API and its runner, read from the environment (``GATEWAY_BATCH_``).

One class for both sides: the gateway reads the limits, the store and the runner's token;
the runner (``python -m gateway.batch``) reads those too, plus how it feeds the pool.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class BatchSettings(BaseSettings):
    """Everything the Batch API can be told (env: GATEWAY_BATCH_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_BATCH_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Off: /v1/files and /v1/batches answer 404, and batch lines are refused.
    enabled: bool = True
    # Where files, batches and line results live; None: the interaction log's database.
    database_url: SecretStr | None = None
    # The shared secret that makes a request a batch line (gateway/batch/lane.py): only
    # the runner holds it. Unset: every batch line is refused and the runner will not start.
    runner_token: SecretStr | None = None
    # vLLM's priority for batch lines (lower runs first; online requests have 0), so a
    # worker with --scheduling-policy priority serves shoppers first.
    priority: int = Field(default=10, ge=1)
    # Lines per input file (OpenAI's limit is 50,000). A file's bytes are bounded by the
    # request body limit (GATEWAY_MAX_BODY_BYTES), as every upload is.
    max_lines: int = Field(default=50_000, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)

    # -- the runner ------------------------------------------------------------------------
    # Where lines are sent: Nginx or a gateway (the same pipeline as online requests). Its
    # /metrics is read for the workers' queues.
    gateway_url: str = "http://127.0.0.1:8080"
    # Lines in flight from one runner.
    concurrency: int = Field(default=4, gt=0, le=256)
    # Lines are only sent while the workers' queues (requests waiting, summed over the
    # healthy workers the gateway sees) hold at most this many: idle capacity only.
    max_waiting: int = Field(default=0, ge=0)
    # A claimed line is the runner's for this long, renewed every third of it while its
    # request runs; a runner that dies loses its lines to another one after it.
    lease_s: float = Field(default=60.0, gt=0)
    # How often the runner looks for work and reads the workers' queues when idle.
    poll_interval_s: float = Field(default=0.5, gt=0)
    # Tries of one line when the gateway answers 429, 5xx or not at all; then it fails.
    max_attempts: int = Field(default=5, ge=1)
    # One line's request, start to end (longer than the gateway's GATEWAY_TOTAL_TIMEOUT_S).
    request_timeout_s: float = Field(default=660.0, gt=0)
    # The runner's /metrics (Prometheus).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9450, ge=0, le=65535)

    @field_validator("database_url")
    @classmethod
    def _mysql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            url = make_url(value.get_secret_value())
        except Exception:
            raise ValueError("batch database_url is not a valid URL") from None
        if url.get_backend_name() not in ("mysql", "mariadb"):
            raise ValueError("batch database_url must be a MySQL/MariaDB URL")
        return value

    @field_validator("gateway_url")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        return value.rstrip("/")
