"""Alembic environment: synchronous PyMySQL, metadata from gateway.db.models."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import URL

from gateway.db.engine import create_sync_engine
from gateway.db.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> URL | str:
    url = config.attributes.get("database_url")
    if url is not None:
        return url  # type: ignore[no-any-return]
    # Run by the `alembic` command itself: the same settings the gateway reads.
    from gateway.interactions.settings import InteractionLogSettings

    return InteractionLogSettings().database_url.get_secret_value()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_sync_engine(_database_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if config.attributes.get("configure_logging", True) and config.config_file_name is not None:
    fileConfig(config.config_file_name)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
